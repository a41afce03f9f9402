//! Arbitrary bytes as a v2 gRPC `ModelInferRequest`: protobuf decoding, then the tensor
//! decoder and the response encoder. No input may panic; a decoded batch keeps its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offload_proto::inference as pb;
use offload_shared::oip::{grpc_input, grpc_response, Outputs};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = pb::ModelInferRequest::decode(data) else {
        return;
    };
    for d in [1usize, 64] {
        if let Ok(b) = grpc_input(&req, d, 16) {
            assert_eq!(b.values.len(), b.rows * d);
            assert!(b.rows >= 1 && b.rows <= 16);
            assert!(b.values.iter().all(|v| v.is_finite()));
            let out = Outputs { rows: b.rows, num_classes: 3, probs: vec![0.5; b.rows * 3] };
            let _ = grpc_response(&req, "m", "1", &out);
        }
    }
});
