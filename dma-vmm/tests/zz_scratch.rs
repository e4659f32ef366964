#![cfg(not(loom))]
use std::time::Instant;
#[test]
fn scratch_sync_latency() {
    let t = Instant::now();
    for _ in 0..1000 { dma_vmm::quiesce::synchronize(); }
    eprintln!("idle: {:?}/sync", t.elapsed() / 1000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hs: Vec<_> = (0..2).map(|_| { let stop = stop.clone(); std::thread::spawn(move || { while !stop.load(std::sync::atomic::Ordering::Relaxed) { let _g = dma_vmm::quiesce::read_section(); for _ in 0..100 { std::hint::spin_loop(); } } }) }).collect();
    let t = Instant::now();
    for _ in 0..200 { dma_vmm::quiesce::synchronize(); }
    eprintln!("2 readers: {:?}/sync", t.elapsed() / 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in hs { h.join().unwrap(); }
}
