mod alerts;
mod classify;
mod lmtp;
mod bounces;
