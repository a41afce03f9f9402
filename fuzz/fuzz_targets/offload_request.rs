//! Arbitrary bytes as an `offload.v1.InferRequest`: protobuf decoding and the tensor decoder
//! never panic; a decoded batch keeps its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload_proto::v1 as pb;
use offload_shared::wire::decode_input;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::InferRequest::decode(data) else {
        return;
    };
    for d in [1usize, 64] {
        if let Ok(b) = decode_input(req.input.as_ref(), d, 16) {
            assert_eq!(b.values.len(), b.rows * d);
            assert!(b.values.iter().all(|v| v.is_finite()));
        }
    }
});
