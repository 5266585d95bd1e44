fn main() -> std::process::ExitCode {
    imap_idle::lab::main()
}
