//! A test buildpack that opens a TCP connection itself, so its component imports
//! `wasi:sockets`. The host must refuse to load it: downloads go through `fetch` only.

use dea_sdk::{Buildpack, Context, Detection, Error, Release};

struct Sockets;

impl Buildpack for Sockets {
    fn detect(_ctx: &Context) -> Result<Option<Detection>, Error> {
        match std::net::TcpStream::connect("127.0.0.1:80") {
            Ok(_) => Ok(Some(Detection::named("connected"))),
            Err(e) => Err(Error::Io(e.to_string())),
        }
    }

    fn compile(_ctx: &Context) -> Result<(), Error> {
        Ok(())
    }

    fn release(_ctx: &Context) -> Result<Release, Error> {
        Ok(Release::empty())
    }
}

dea_sdk::export_buildpack!(Sockets);
