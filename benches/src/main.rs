//! `dmabench`: runs the suite, prints a table per component and the targets, and writes JSON
//! and SVG plots into the results folder.

use clap::Parser;
use dma_bench::report::Layout;
use dma_bench::{cli::Cli, output, report, targets};

fn main() {
    let opts = Cli::parse().into_options();
    if !opts.quiet {
        eprintln!(
            "dmabench: threads {:?}, {} ms per case and thread count, {} repetitions{}, {} CPUs, \
             output in {}",
            opts.threads,
            opts.duration_ms,
            opts.repetitions,
            if opts.smoke { " (smoke)" } else { "" },
            dma_bench::harness::cpu_count(),
            opts.out.display()
        );
    }
    let rep = dma_bench::run(&opts);
    let layout = if opts.wide {
        Layout::Wide
    } else {
        Layout::Compact
    };
    print!(
        "{}",
        report::tables(&rep.results, &opts.threads, rep.meta.cpus, layout)
    );
    print!("{}", report::targets_table(&rep.targets, layout));
    if let Some(load) = rep.meta.load_average.filter(|&l| l > rep.meta.cpus as f64) {
        println!(
            "note: load average {load:.1} on {} CPUs: other work shared the CPUs; CPU ns/op and the\n\
             load-adjusted throughput discount it, oversubscribed (wall-clock) throughput does not",
            rep.meta.cpus
        );
    }
    for o in &rep.omitted {
        println!(
            "left out: {}: {}\n    ({})",
            o.component.name(),
            o.what,
            o.reason
        );
    }
    match output::write_all(&rep, &opts) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Err(e) => {
            eprintln!(
                "dmabench: cannot write results to {}: {e}",
                opts.out.display()
            );
            std::process::exit(1);
        }
    }
    if opts.check && !targets::all_met(&rep.targets) {
        eprintln!("dmabench: a target was missed (--check)");
        std::process::exit(2);
    }
}
