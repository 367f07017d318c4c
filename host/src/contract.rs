//! The plugin contract (`wit/`) as Rust: the generated bindings and nothing else. Capabilities
//! implement the imported interfaces on their own per-call state; the runtime instantiates the
//! world and calls the exported interfaces. Both depend on this module, never on each other's
//! insides.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "mlgw:backend/backend",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::mlgw::backend::{serving, training};
pub use self::mlgw::backend::types;
