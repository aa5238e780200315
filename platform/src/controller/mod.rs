//! `dea controller`: stages apps through agents, places their instances and keeps what runs
//! equal to what is wanted.

pub mod converge;
pub mod fleet;
