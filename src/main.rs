//! The `junction` binary. Everything it does is in `junction-server`.

fn main() -> std::process::ExitCode {
    junction_server::entry::main()
}
