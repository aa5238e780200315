//! The default buildpacks built into this binary: `build.rs` embeds what
//! `scripts/build-plugins` built (`target/buildpacks/<id>/`), in detection order. Only the
//! binary carries them, not the library its tests link.

include!(concat!(env!("OUT_DIR"), "/default_buildpacks.rs"));
