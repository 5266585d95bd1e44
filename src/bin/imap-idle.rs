fn main() -> std::process::ExitCode {
    imap_idle::idle::main()
}
