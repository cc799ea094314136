//! 受信テスト: "does mail from us reach me?", asked by a parent.
//!
//! 1. [`App::request_test`]: the top page (an address typed in) or the
//!    manage page (the subscriber's own address) asks for a test mail with
//!    a one-time 届きました link (`/t/`); the parent gets a waiting page
//!    (`/w/`) with a token of its own.
//! 2. [`App::test_status`]: the waiting page reloads itself (a meta
//!    refresh, no script) and shows whether the link came back; after
//!    `[tokens] reception_wait_secs` without it, the help for the carrier
//!    of the address (`mamoru_core::help`).
//! 3. [`App::test_view`] / [`App::mark_test_arrived`]: the link's page
//!    (GET shows a button, mail scanners change nothing) and its POST.

use mamoru_core::help::Carrier;
use mamoru_core::mailbox::{self, NoReply};
use mamoru_core::seal::BlindIndex;
use mamoru_core::token::{Claims, Purpose};
use mamoru_core::{EmailAddress, UnixTime, mail};
use mamoru_store::Limited;
use mamoru_store::reception::{ReceptionLimits, TestRequest, TestView};

use crate::{App, Error};

/// Who asks for a test.
#[derive(Debug, Clone, Copy)]
pub enum Asker<'a> {
    /// The top page's form, for a typed address, from this client (keyed
    /// hash, as for the registration form).
    Visitor { addr: &'a EmailAddress, client: BlindIndex },
    /// The manage page, for the registered address its link opens.
    Subscriber { manage: &'a Claims },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// The mail is queued; `waiting` is the token of the waiting page.
    Queued { waiting: String },
    Limited(Limited),
    /// The address never gets mail from us.
    NoReply(NoReply),
    /// The manage link no longer opens a registration.
    LinkUnusable,
}

/// What the waiting page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatus {
    /// Sent; not confirmed yet, and it is early.
    Waiting,
    /// The 届きました link came back: reception works.
    Arrived,
    /// Not confirmed after the wait: the help for this carrier (`None`:
    /// the domain names none; show them all).
    Unconfirmed(Option<Carrier>),
}

impl App {
    /// Queues a 受信テスト mail under the reception limits.
    pub fn request_test(&self, asker: Asker<'_>, now: UnixTime) -> Result<TestOutcome, Error> {
        let cfg = &*self.cfg;
        let (addr, client) = match asker {
            Asker::Visitor { addr, client } => (addr.clone(), Some(client)),
            Asker::Subscriber { manage } => match self.store.managed_address(manage, now)? {
                Some(addr) => (addr, None),
                None => return Ok(TestOutcome::LinkUnusable),
            },
        };
        if let Some(why) = mailbox::no_reply(&addr, &cfg.domain) {
            return Ok(TestOutcome::NoReply(why));
        }
        let limits = ReceptionLimits::from(&cfg.limits);
        let expires_at = now + cfg.tokens.reception_ttl_secs;
        let random = self.random12()?;
        let mut waiting = String::new();
        let r = self.store.request_reception_test(&addr, client.as_ref(), now, &limits, expires_at, |test, nonces| {
            let claims = |purpose, nonce| Claims { purpose, subject: test.subject(), nonce, expires_at };
            waiting = self.tokens.sign(&claims(Purpose::Waiting, nonces.waiting));
            let arrived = self.tokens.sign(&claims(Purpose::Arrived, nonces.arrived));
            mail::reception_test(cfg, &addr, &arrived, now, mail::message_id(&random, cfg))
        })?;
        Ok(match r {
            TestRequest::Queued { test, outbox, .. } => {
                tracing::info!(test = test.get(), outbox = outbox.get(), to = %addr.masked(), "reception test queued");
                self.queued();
                TestOutcome::Queued { waiting }
            }
            TestRequest::Limited(limit) => {
                tracing::info!(limit = limit.as_str(), to = %addr.masked(), "reception test refused by a rate limit");
                TestOutcome::Limited(limit)
            }
        })
    }

    /// The state of the test a waiting-page token names; `None` once it
    /// expired.
    pub fn test_status(&self, waiting: &Claims, now: UnixTime) -> Result<Option<TestStatus>, Error> {
        let Some(v) = self.store.reception_test(waiting, false, now)? else { return Ok(None) };
        Ok(Some(self.status_of(&v, now)))
    }

    fn status_of(&self, v: &TestView, now: UnixTime) -> TestStatus {
        if v.arrived_at > 0 {
            TestStatus::Arrived
        } else if now - v.created_at >= self.cfg.tokens.reception_wait_secs {
            TestStatus::Unconfirmed(Carrier::of_domain(&v.domain))
        } else {
            TestStatus::Waiting
        }
    }

    /// The 届きました page of a live link: has it been pressed already?
    /// Changes nothing.
    pub fn test_view(&self, arrived: &Claims, now: UnixTime) -> Result<Option<TestView>, Error> {
        Ok(self.store.reception_test(arrived, true, now)?)
    }

    /// The 届きました button: the test arrived (once; pressing it again
    /// changes nothing).
    pub fn mark_test_arrived(&self, arrived: &Claims, now: UnixTime) -> Result<Option<TestView>, Error> {
        let v = self.store.mark_test_arrived(arrived, now)?;
        if let Some(v) = &v {
            tracing::info!(test = v.test.get(), "reception test arrived");
        }
        Ok(v)
    }
}
