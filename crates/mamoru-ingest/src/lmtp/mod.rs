pub mod proto;
pub mod server;
