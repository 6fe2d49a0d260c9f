//! `keel shell`: an interactive SQL shell against any node.

/// Flags of `keel shell`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShellArgs {
    /// HTTP URL of any cluster node.
    #[arg(default_value = "http://127.0.0.1:4001")]
    pub url: String,
}

/// Runs the shell until end of input.
pub fn run(args: ShellArgs) -> anyhow::Result<()> {
    anyhow::bail!("keel shell is not built yet (asked for {})", args.url)
}
