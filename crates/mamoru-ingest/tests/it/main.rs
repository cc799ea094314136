mod classify;
mod lmtp;
