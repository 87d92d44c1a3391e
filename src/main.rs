//! The `portcullis` binary: parse the command line, run the command, map errors to exit codes
//! (1 for failures, 2 for usage errors, which clap reports itself).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: the request path allocates and frees a few kilobytes of
/// futures and buffers per request, past glibc's per-thread cache. On an Intel Xeon VM
/// mimalloc took 5 % off the CPU per keep-alive request and 10 % off HTTP/2's (on an AMD
/// EPYC VM the difference was within noise; docs/benchmarks.md). It is tuned below so that
/// idle connections cost no more memory than with glibc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h. mimalloc never renumbers its options (retired
/// ones stay as `mi_option_deprecated_*`), and the test below checks the value took.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs before `main` and before Rust's first allocation, which creates mimalloc's first
/// arena: on Linux mimalloc commits arenas eagerly by default and then never returns their
/// memory, which cost about 12 MiB at start and 30 % more memory per idle connection. With
/// the arena committed on demand, freed pages go back to the kernel and idle RSS is at or
/// below glibc's. A `MIMALLOC_ARENA_EAGER_COMMIT` set in the environment to anything but
/// mimalloc's default (2) is left as it is.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        // SAFETY: reads (from the environment, without allocating) and sets one of mimalloc's
        // option words, before anything has been allocated.
        unsafe {
            if libmimalloc_sys::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) == 2 {
                libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
            }
        }
    }
    tune
};

fn main() -> ExitCode {
    let cli = portcullis::cli::Cli::parse();
    match portcullis::commands::execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn arenas_are_committed_on_demand() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some() {
            return; // an operator's choice is kept, by design
        }
        // SAFETY: reads an option word.
        let v = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT) };
        assert_eq!(v, 0);
    }
}
