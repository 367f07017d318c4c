//! The allocator every gateway binary runs on, and its options: mimalloc, configured before
//! `main` by `use_gateway_allocator!`.

/// The global allocator of every binary that runs the gateway (`mlgw`, the load generator):
/// glibc's malloc and free were 14 % of a Submit's CPU under 64 clients, and musl's malloc
/// takes one lock for every thread. Install it with `use_gateway_allocator!`.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `arena_eager_commit` option (its index in `mi_option_e`, the same in mimalloc
/// 2 and 3; the sys crate names no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator's options; runs before `main` (see `use_gateway_allocator!`). By
/// default mimalloc commits each arena whole where the OS overcommits and advises
/// transparent huge pages on it, so every page touched while loading plugins came in as 2 MiB:
/// an idle `mlgw serve` held 75 MB instead of 30 MB. Committed on demand, it keeps the huge
/// pages' speed under load (Submit at 64 clients level with the default, three alternating
/// runs) at the smaller footprint.
pub extern "C" fn configure() {
    // SAFETY: sets one option's value; mimalloc reads options when it needs them.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

/// Installs `Allocator` as the binary's global allocator and configures it before `main`
/// runs, so no arena is reserved before the options are set. A macro, not a static here:
/// a library's `#[used]` static is not sure to be linked into a binary that names nothing
/// else in its object.
#[macro_export]
macro_rules! use_gateway_allocator {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::allocator::Allocator = $crate::allocator::Allocator;

        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static CONFIGURE_ALLOCATOR: extern "C" fn() = $crate::allocator::configure;
    };
}

#[cfg(test)]
mod tests {
    /// The sys crate names no constant for the option, so its index is pinned here: 4 is the
    /// one option whose default is 2 ("eager where the OS overcommits"), and setting it sticks.
    #[test]
    fn the_option_set_is_arena_eager_commit() {
        use libmimalloc_sys::mi_option_get;
        // SAFETY: reads and sets options; no other test touches them.
        unsafe {
            assert_eq!(mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT), 2);
            assert_eq!(mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT - 1), 1);
            assert_eq!(mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT + 1), 1);
            super::configure();
            assert_eq!(mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT), 0);
        }
    }
}
