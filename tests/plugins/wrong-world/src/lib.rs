//! A test component built against its own world (`wit/`), not the buildpack contract.

// The bindings wit-bindgen generates in this crate export functions by symbol name.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "wit",
    world: "buildpack",
    generate_all,
});

struct WrongWorld;

impl Guest for WrongWorld {
    fn detect() -> Result<bool, Error> {
        Ok(true)
    }

    fn compile() -> Result<(), Error> {
        // Use the import so the component keeps it.
        wasi::http::outgoing_handler::handle("http://example.invalid/")
            .map(|_| ())
            .map_err(Error::Failed)
    }
}

export!(WrongWorld);
