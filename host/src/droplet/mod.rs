//! Droplets: the staged app as a `.tgz` laid out like Cloud Foundry's (`app/`,
//! `logs/staging_task.log`, `tmp/`, `staging_info.yml`), and the safe unpacking of the
//! untrusted sources they are made from.

pub mod diff;
mod gzip;
pub mod pack;
pub mod staging_info;
pub mod unpack;

pub use diff::{
    DiffError, DiffLimits, Difference, DropletDiff, diff_droplets, droplet_digests, droplet_epoch,
};
pub use pack::{
    DEFAULT_EPOCH, PackError, PackLimits, PackOptions, PackedDroplet, Stamp, pack_tree,
    pack_tree_limited, pack_tree_with,
};
pub use staging_info::StagingInfo;
pub use unpack::{
    UnpackError, UnpackLimits, UnpackStats, unpack_into, unpack_source, unpack_stripped,
};
