/// mimalloc instead of glibc's malloc: under load the server allocates and frees on
/// every request from several threads, where glibc's arenas spent a fifth of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cairn::main()
}
