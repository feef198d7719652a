//! `tapio-cni`: the CNI plugin that reports every CNI operation on the node to the Tapio
//! agent (see the `plugin` module of `tapio-sources-cni` for its two modes). The runtime runs
//! it with the `CNI_*` environment and the network configuration on standard input.

use std::io::{Read, Write};

use tapio_sources_cni::plugin::{Environment, run, send};

fn main() {
    let mut stdin = Vec::new();
    if let Err(error) = std::io::stdin().read_to_end(&mut stdin) {
        eprintln!("tapio-cni: cannot read the network configuration: {error}");
    }
    let outcome = run(&stdin, &Environment::from_process());
    if let Some(report) = &outcome.report
        && let Err(error) = send(report, &outcome.socket, outcome.timeout)
    {
        eprintln!(
            "tapio-cni: the report of this {} was not delivered to {}: {error}",
            report.command,
            outcome.socket.display()
        );
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush());
    if let Err(error) = written {
        eprintln!("tapio-cni: cannot write the result: {error}");
        std::process::exit(if outcome.status == 0 {
            1
        } else {
            outcome.status
        });
    }
    std::process::exit(outcome.status);
}
