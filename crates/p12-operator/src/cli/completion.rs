//! Flags of `p12-operator completion`: the shell. Uses only clap and clap_complete.

const COMPLETION_HELP: &str = "\
Installing the script:
  bash        p12-operator completion bash > /etc/bash_completion.d/p12-operator
              (or, for one user: p12-operator completion bash > ~/.local/share/bash-completion/completions/p12-operator)
  zsh         p12-operator completion zsh > \"${fpath[1]}/_p12-operator\"   (then start a new shell)
  fish        p12-operator completion fish > ~/.config/fish/completions/p12-operator.fish
  powershell  p12-operator completion powershell | Out-String | Invoke-Expression   (add to $PROFILE)
  elvish      p12-operator completion elvish >> ~/.config/elvish/rc.elv

For the current bash session only:
  source <(p12-operator completion bash)";

/// Flags of `p12-operator completion`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = COMPLETION_HELP)]
pub struct CompletionArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
