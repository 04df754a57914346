//! The SASL mechanisms of POP3's AUTH command over an [`Authenticator`]: the state machines are
//! facteur-proto's ([`facteur_proto::sasl`]); this module makes the user database their
//! [`SaslVerifier`], and names their types for facteur's [`Account`].
//!
//! It must never hold a rule of the mechanisms: those are written once, in facteur-proto.

use facteur_proto::sasl::SaslVerifier;

use super::{Account, Authenticator, Checked, PasswdDb};

/// One SASL exchange for a facteur account: see [`facteur_proto::sasl::SaslExchange`].
pub type SaslExchange = facteur_proto::sasl::SaslExchange<Account>;

/// What the driver does next in an exchange: see [`facteur_proto::sasl::SaslStep`].
pub type SaslStep = facteur_proto::sasl::SaslStep<Account>;

/// The SCRAM-SHA-256 keys of a facteur user: see [`facteur_proto::sasl::ScramCredentials`].
pub type ScramCredentials = facteur_proto::sasl::ScramCredentials<Account>;

/// Every authenticator is a verifier, by its `check_*` methods. Written out per type, not as
/// `impl<A: Authenticator> SaslVerifier for A`, which the orphan rule forbids (both the trait
/// and `A` would be foreign to this crate): for `dyn Authenticator`, which the server holds,
/// and for [`PasswdDb`], which the tests and the fetcher's own tests use directly.
macro_rules! verifier_for_authenticator {
    ($($t:ty),*) => {$(
        impl SaslVerifier for $t {
            type Account = Account;

            fn check_password(&self, user: &str, password: &[u8]) -> Checked {
                Authenticator::check_password(self, user, password)
            }

            fn check_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> Checked {
                Authenticator::check_cram_md5(self, user, challenge, digest_hex)
            }

            fn scram_credentials(&self, user: &str) -> ScramCredentials {
                Authenticator::scram_credentials(self, user)
            }

            fn account(&self, identity: &str) -> Option<Account> {
                Authenticator::account(self, identity)
            }
        }
    )*};
}

verifier_for_authenticator!(dyn Authenticator, PasswdDb);

/// The verifier of a server's exchanges: its user database, and the issuers whose bearer
/// tokens it accepts, if any.
pub struct ServerVerifier<'a> {
    pub users: &'a dyn Authenticator,
    pub oauth: Option<&'a crate::oauth::OAuth>,
}

impl SaslVerifier for ServerVerifier<'_> {
    type Account = Account;

    fn check_password(&self, user: &str, password: &[u8]) -> Checked {
        self.users.check_password(user, password)
    }

    fn check_cram_md5(&self, user: &str, challenge: &[u8], digest_hex: &str) -> Checked {
        self.users.check_cram_md5(user, challenge, digest_hex)
    }

    fn scram_credentials(&self, user: &str) -> ScramCredentials {
        self.users.scram_credentials(user)
    }

    fn account(&self, identity: &str) -> Option<Account> {
        self.users.account(identity)
    }

    fn check_bearer(&self, token: &str) -> Result<String, facteur_proto::sasl::FailureReason> {
        match self.oauth {
            Some(oauth) => oauth.check(token),
            None => Err(facteur_proto::sasl::FailureReason::BadToken(
                "no issuer is configured",
            )),
        }
    }

    fn bearer_claimed_user(&self, token: &str) -> Option<String> {
        self.oauth.and_then(|oauth| oauth.claimed_user(token))
    }
}

#[cfg(test)]
mod tests;
