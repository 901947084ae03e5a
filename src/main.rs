//! `wxedge`: parse the command line, hand over to `wxedge::server`.

use clap::Parser;

fn main() {
    let cli = wxedge::server::Cli::parse();
    std::process::exit(wxedge::server::main(cli));
}
