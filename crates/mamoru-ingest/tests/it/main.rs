mod alerts;
mod classify;
mod lmtp;
