mod classify;
mod lmtp;
mod bounces;
