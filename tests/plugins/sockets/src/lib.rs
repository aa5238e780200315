//! A test buildpack that uses the network itself, so its component imports `wasi:sockets`.
//! The host loads it (guest toolchains import sockets whether they use them or not) but
//! grants no network: detect tries a TCP connect to `SOCKETS_CONNECT` (default
//! `127.0.0.1:80`), a UDP bind and a name lookup, and reports what each one did.

use dea_sdk::{Buildpack, Context, Detection, Error, Release};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};

struct Sockets;

impl Buildpack for Sockets {
    fn detect(ctx: &Context) -> Result<Option<Detection>, Error> {
        let target = ctx
            .env("SOCKETS_CONNECT")
            .unwrap_or_else(|| "127.0.0.1:80".to_string());
        // Any success is a hole in the sandbox: say so as a detection the test rejects.
        if TcpStream::connect(&target).is_ok() {
            return Ok(Some(Detection::named(format!("connected to {target}"))));
        }
        if UdpSocket::bind("127.0.0.1:0").is_ok() {
            return Ok(Some(Detection::named("bound a UDP socket")));
        }
        if ("localhost", 80).to_socket_addrs().is_ok() {
            return Ok(Some(Detection::named("resolved localhost")));
        }
        let error = TcpStream::connect(&target)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        Err(Error::Io(format!("connect {target}: {error}")))
    }

    fn compile(_ctx: &Context) -> Result<(), Error> {
        Ok(())
    }

    fn release(_ctx: &Context) -> Result<Release, Error> {
        Ok(Release::empty())
    }
}

dea_sdk::export_buildpack!(Sockets);
