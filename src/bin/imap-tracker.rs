fn main() -> std::process::ExitCode {
    imap_idle::tracker::main()
}
