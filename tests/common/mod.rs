#![allow(dead_code)]
pub mod ops;
