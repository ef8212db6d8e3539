//! `completion`: prints a shell completion script for the whole `crate::cli`
//! command tree.

use crate::cli::CompletionArgs;

/// Runs `p12-operator completion`: prints the completion script on stdout.
pub fn completion(args: CompletionArgs) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    let mut command = crate::cli::Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, name, &mut script);
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::anyhow!(
            "failed to write the completion script: {e}"
        )),
        _ => Ok(0),
    }
}
