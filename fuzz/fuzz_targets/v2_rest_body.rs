//! Arbitrary bytes as a v2 REST body (with or without Triton's binary extension): splitting,
//! JSON parsing, the tensor decoder and the response encoder never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload_shared::oip::{rest_input, rest_response, split_body, Outputs, RestRequest};

fuzz_target!(|data: &[u8]| {
    let (header_len, body) = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (Some((b >> 1) as usize), rest),
        Some((_, rest)) => (None, rest),
        None => return,
    };
    let Ok((json, tail)) = split_body(body, header_len) else {
        return;
    };
    let Ok(req) = serde_json::from_slice::<RestRequest>(json) else {
        return;
    };
    if let Ok(b) = rest_input(&req, tail, 4, 16) {
        assert_eq!(b.values.len(), b.rows * 4);
        assert!(b.values.iter().all(|v| v.is_finite()));
        let out = Outputs { rows: b.rows, num_classes: 2, probs: vec![0.5; b.rows * 2] };
        let _ = rest_response(&req, "m", "1", &out);
    }
});
