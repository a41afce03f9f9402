//! Kernel figures on one decoder step of SmolLM2-135M (30 blocks of q/k/v, o, gate/up, down,
//! plus the 49152-row output head): GFLOP/s and weight GB/s at 1, 8 and 96 rows, float32 and
//! int8. usage: cargo run --release -p offload-kernels --example bench [THREADS]
use offload_kernels::{isa, Packed, Pool};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = Pool::new(threads).expect("pool");
    let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
    let mut s = 1u64;
    let mut rnd = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect()
    };
    let layers: Vec<(Vec<f32>, usize, usize)> = (0..30)
        .flat_map(|_| shapes.map(|(n, k)| (n, k)))
        .chain([(49152, 576)])
        .map(|(n, k)| (rnd(n * k), n, k))
        .collect();
    println!("isa {}, {threads} threads", isa());
    println!("| weights | rows | ms per step | GFLOP/s | weight GB/s |");
    println!("|---|---|---|---|---|");
    for int8 in [false, true] {
        let packed: Vec<Packed> = layers
            .iter()
            .map(|(w, n, k)| {
                if int8 {
                    Packed::int8(w, *n, *k)
                } else {
                    Packed::f32(w, *n, *k)
                }
            })
            .collect();
        let bytes: usize = packed.iter().map(Packed::bytes).sum();
        let params: usize = layers.iter().map(|(_, n, k)| n * k).sum();
        for b in [1usize, 8, 96] {
            let xs: Vec<Vec<f32>> = packed.iter().map(|p| rnd(b * p.k())).collect();
            let mut outs: Vec<Vec<f32>> = packed.iter().map(|p| vec![0f32; b * p.n()]).collect();
            let reps = if b > 8 { 3 } else { 10 };
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t0 = Instant::now();
                for ((p, x), o) in packed.iter().zip(&xs).zip(outs.iter_mut()) {
                    pool.matmul(p, x, b, o);
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            println!(
                "| {} | {b} | {:.2} | {:.1} | {:.1} |",
                if int8 { "int8" } else { "f32" },
                best * 1e3,
                2.0 * (params * b) as f64 / best / 1e9,
                bytes as f64 / best / 1e9
            );
        }
    }
}
