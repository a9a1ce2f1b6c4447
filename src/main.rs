//! The `junction` binary. Everything it does is in `junction-server`.

// jemalloc rather than glibc's malloc: glibc keeps an arena per thread that
// ever allocated and raises its mmap threshold after the first large free,
// so memory from a burst (thousands of clients connecting at once) stays
// resident for good. Measured with benches/compare's idle scenario: 3.9 KB
// of broker memory per idle MQTT connection with jemalloc, 8.0 KB with glibc.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's options are compiled in (`.cargo/config.toml` sets
// JEMALLOC_SYS_WITH_MALLOC_CONF; `_RJEM_MALLOC_CONF` in the environment
// still overrides them at run time): see there for why.

fn main() -> std::process::ExitCode {
    junction_server::entry::main()
}
