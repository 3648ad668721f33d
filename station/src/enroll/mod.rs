//! Enrollments from product profiles: what DPS should hold for each unit or group.

pub mod build;
pub mod group;
pub mod profile;
pub mod template;
