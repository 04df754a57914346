//! The human-readable texts of the server's responses, in every language it speaks (RFC 6856
//! section 3, LANG), in one place.
//!
//! A response is a status (`+OK`, `-ERR`), maybe a response code, then text for a person. Only
//! that text changes with the language: status indicators, response codes, numbers that
//! clients read (STAT, LIST, RETR's octet count), unique-ids and capability names never do.
//!
//! Every text is a [`Msg`] key with one template per [`Lang`]; the `catalogue!` table below
//! cannot be written with a language missing. A template's `{0}`, `{1}` are filled by
//! [`Lang::render`]. Texts are plain UTF-8 in NFC (RFC 5198), one line each. This module must
//! never hold protocol logic: what to say is decided by the state machines, how to say it here.

use std::fmt;

/// A language the server's texts exist in. The first, English, is the default of RFC 2277
/// section 4.5 ("understandable by an English-speaking person").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lang {
    #[default]
    En,
    Fr,
}

impl Lang {
    /// Every language, in the order LANG lists them.
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Fr];

    /// The language tag (RFC 5646).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fr => "fr",
        }
    }

    /// The language's name in itself, for the LANG listing.
    pub fn description(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Fr => "Français",
        }
    }

    /// The language for a tag, exactly (any case): for configuration files.
    pub fn from_tag(tag: &str) -> Option<Lang> {
        Lang::ALL
            .into_iter()
            .find(|l| l.tag().eq_ignore_ascii_case(tag))
    }

    /// The language a client's language range asks for, by the lookup of RFC 4647 section 3.4:
    /// the range, then the range less its last subtag, and so on (`fr-CA` finds `fr`). `*`
    /// is not handled here (it means the server's default). None if nothing matches or the range
    /// is not shaped as one.
    pub fn lookup(range: &str) -> Option<Lang> {
        if !is_language_range(range) {
            return None;
        }
        let mut candidate = range;
        loop {
            if let Some(l) = Lang::from_tag(candidate) {
                return Some(l);
            }
            let (shorter, _) = candidate.rsplit_once('-')?;
            // A single-letter subtag (an extension or private-use singleton) goes with the one
            // after it (RFC 4647 section 3.4).
            candidate = match shorter.rsplit_once('-') {
                Some((before, last)) if last.len() == 1 => before,
                _ => shorter,
            };
        }
    }

    /// The template of `msg` in this language.
    pub fn template(self, msg: Msg) -> &'static str {
        let (en, fr) = msg.texts();
        match self {
            Lang::En => en,
            Lang::Fr => fr,
        }
    }

    /// `msg` in this language with its placeholders filled, to write with `{}`.
    pub fn render<'a>(self, msg: Msg, args: &'a [&'a dyn fmt::Display]) -> Rendered<'a> {
        Rendered {
            template: self.template(msg),
            args,
        }
    }

    /// A count and its noun in this language's grammar: "1 message", "0 messages" in English,
    /// "0 message" in French (singular below 2).
    pub fn count(self, n: u64, one: Msg, many: Msg) -> String {
        let singular = match self {
            Lang::En => n == 1,
            Lang::Fr => n < 2,
        };
        self.render(if singular { one } else { many }, &[&n])
            .to_string()
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// `Language-Range` of RFC 4647 section 2.1 (the basic form), which is what LANG takes:
/// 1 to 8 letters, then `-` and 1 to 8 letters or digits, any number of times.
fn is_language_range(s: &str) -> bool {
    let mut parts = s.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A template with its arguments; `{n}` is the n-th argument (templates hold no other brace).
#[derive(Clone, Copy)]
pub struct Rendered<'a> {
    template: &'static str,
    args: &'a [&'a dyn fmt::Display],
}

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.template;
        while let Some(i) = rest.find('{') {
            f.write_str(&rest[..i])?;
            let Some((n, tail)) = rest[i + 1..].split_once('}') else {
                return f.write_str(&rest[i..]);
            };
            if let Some(arg) = n.parse::<usize>().ok().and_then(|n| self.args.get(n)) {
                arg.fmt(f)?;
            }
            rest = tail;
        }
        f.write_str(rest)
    }
}

/// Declares [`Msg`], its list of keys, and each key's English and French templates: a key
/// cannot be added without both.
macro_rules! catalogue {
    ($( $(#[$doc:meta])* $key:ident => $en:literal, $fr:literal; )*) => {
        /// A human-readable text the server sends, as a key into the catalogue.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Msg {
            $( $(#[$doc])* $key, )*
        }

        impl Msg {
            /// Every key of the catalogue.
            pub const ALL: &'static [Msg] = &[$(Msg::$key),*];

            /// (English, French).
            fn texts(self) -> (&'static str, &'static str) {
                match self {
                    $( Msg::$key => ($en, $fr), )*
                }
            }
        }
    };
}

catalogue! {
    /// The greeting's default text (RFC 1939 section 4).
    Greeting => "facteur POP3 server ready", "serveur POP3 facteur prêt";
    LineTooLong => "line too long", "ligne trop longue";
    CommandOutOfTurn => "internal error: command out of turn",
        "erreur interne : commande hors de son tour";
    UnknownCommand => "unknown command", "commande inconnue";
    EmptyCommand => "empty command", "commande vide";
    ControlCharacter => "command contains a NUL or control character",
        "la commande contient un caractère NUL ou de contrôle";
    PassNeedsPassword => "PASS needs a password", "PASS attend un mot de passe";
    UserNeedsName => "USER needs exactly one argument: the user name",
        "USER attend exactement un argument : le nom d'utilisateur";
    UserNameNotUtf8 => "user name is not valid UTF-8",
        "le nom d'utilisateur n'est pas de l'UTF-8 valide";
    ApopNeedsArguments => "APOP needs a name and a digest", "APOP attend un nom et une empreinte";
    ApopDigestShape => "APOP digest must be 32 hexadecimal digits",
        "l'empreinte d'APOP doit compter 32 chiffres hexadécimaux";
    AuthTooManyArguments => "AUTH takes at most two arguments",
        "AUTH prend au plus deux arguments";
    NoArgument => "this command takes no argument", "cette commande ne prend aucun argument";
    RetrNeedsNumber => "RETR needs exactly one argument: a message number",
        "RETR attend exactement un argument : un numéro de message";
    DeleNeedsNumber => "DELE needs exactly one argument: a message number",
        "DELE attend exactement un argument : un numéro de message";
    TopNeedsArguments => "TOP needs a message number and a line count",
        "TOP attend un numéro de message et un nombre de lignes";
    AtMostOneNumber => "at most one message number", "au plus un numéro de message";
    InvalidMessageNumber => "invalid message number", "numéro de message invalide";
    InvalidLineCount => "invalid line count", "nombre de lignes invalide";
    LangArguments => "LANG takes at most one argument: a language tag or *",
        "LANG prend au plus un argument : une étiquette de langue ou *";
    TooManyBadCommands => "too many bad commands, closing connection",
        "trop de commandes erronées, fermeture de la connexion";
    NotBeforeLogin => "command not valid before login",
        "commande non valide avant l'authentification";
    NotAfterLogin => "command not valid after login",
        "commande non valide après l'authentification";
    CapabilityList => "capability list follows", "liste des capacités";
    SigningOff => "signing off", "au revoir";
    SendPass => "send PASS", "envoyez PASS";
    SendUserFirst => "send USER first", "envoyez d'abord USER";
    ApopUnavailable => "APOP is not available on this server",
        "APOP n'est pas disponible sur ce serveur";
    AlreadyTls => "already under TLS", "déjà sous TLS";
    StlsUnavailable => "STLS is not available on this server",
        "STLS n'est pas disponible sur ce serveur";
    BeginTls => "begin TLS negotiation", "début de la négociation TLS";
    NoSasl => "no SASL mechanism is available here", "aucun mécanisme SASL n'est disponible ici";
    SaslMechanisms => "SASL mechanisms follow", "mécanismes SASL disponibles";
    UnsupportedSasl => "unsupported SASL mechanism", "mécanisme SASL non pris en charge";
    PlaintextRefused =>
        "plaintext login is disabled on an unencrypted connection: use TLS (STLS or POP3S)",
        "l'authentification en clair est désactivée sur une connexion non chiffrée : utilisez TLS (STLS ou POP3S)";
    /// `{0}` the user, `{1}` the maildrop's summary.
    LoggedIn => "{0} has {1}", "{0} a {1}";
    MessagesOne => "{0} message", "{0} message";
    MessagesMany => "{0} messages", "{0} messages";
    OctetsOne => "{0} octet", "{0} octet";
    OctetsMany => "{0} octets", "{0} octets";
    /// `{0}` the count of messages, `{1}` of octets.
    Summary => "{0} ({1})", "{0} ({1})";
    BadCredentials => "invalid user name or password",
        "nom d'utilisateur ou mot de passe invalide";
    MaildropInUse => "maildrop is locked by another session",
        "la boîte aux lettres est verrouillée par une autre session";
    LoginTooSoon => "logged in too recently, try again later",
        "connexion trop récente, réessayez plus tard";
    MaildropMisconfigured =>
        "cannot open the maildrop: the server is misconfigured, tell its administrator",
        "impossible d'ouvrir la boîte aux lettres : le serveur est mal configuré, prévenez son administrateur";
    MaildropTryLater => "cannot open the maildrop, try again later",
        "impossible d'ouvrir la boîte aux lettres, réessayez plus tard";
    TooManyAuthAttempts => "too many authentication attempts, closing connection",
        "trop de tentatives d'authentification, fermeture de la connexion";
    CannotReadMaildrop => "cannot read the maildrop, try again later",
        "impossible de lire la boîte aux lettres, réessayez plus tard";
    /// `{0}` the number of messages in the maildrop.
    NoSuchMessage => "no such message, only {0} in maildrop",
        "message inexistant, la boîte n'en contient que {0}";
    /// `{0}` the message number.
    AlreadyDeleted => "message {0} already deleted", "message {0} déjà supprimé";
    UidlListing => "unique-id listing follows", "liste des identifiants uniques";
    /// RETR's answer: the size first, as clients read it (RFC 1939 section 5).
    RetrOctets => "{0} octets", "{0} octets";
    TopFollows => "top of message follows", "début du message";
    /// `{0}` the message number.
    Deleted => "message {0} deleted", "message {0} supprimé";
    /// `{0}` the maildrop's summary.
    MaildropHas => "maildrop has {0}", "la boîte contient {0}";
    /// `{0}` the messages left.
    SigningOffLeft => "signing off ({0} left)", "au revoir (il reste {0})";
    /// `{0}` the messages deleted, `{1}` the number left.
    SigningOffDeleted => "signing off ({0} deleted, {1} left)",
        "au revoir (suppression de {0}, il en reste {1})";
    UpdateFailed => "some deleted messages could not be removed, try again later",
        "certains messages supprimés n'ont pas pu être effacés, réessayez plus tard";
    LanguageListing => "language listing follows", "liste des langues";
    LanguageChanged => "language changed to English", "langue choisie : français";
    UnsupportedLanguage => "unsupported language", "langue non prise en charge";
    Utf8Enabled => "UTF-8 mode enabled", "mode UTF-8 activé";
    Utf8Invalid => "the user name or password is not valid UTF-8",
        "le nom d'utilisateur ou le mot de passe n'est pas de l'UTF-8 valide";
    Utf8Prohibited =>
        "the user name or password has a character SASLprep (RFC 4013) prohibits",
        "le nom d'utilisateur ou le mot de passe contient un caractère que SASLprep (RFC 4013) interdit";
    LoginTimeout => "login took too long, closing connection",
        "authentification trop longue, fermeture de la connexion";
    IdleTimeout => "idle for too long, closing connection",
        "inactif depuis trop longtemps, fermeture de la connexion";
    ShuttingDown => "server shutting down, try again later",
        "arrêt du serveur, réessayez plus tard";
    MaildropNotOpen => "maildrop not open", "boîte aux lettres non ouverte";
    CannotReadMessage => "cannot read that message now",
        "impossible de lire ce message pour l'instant";
    TooManyConnections => "too many connections", "trop de connexions";
    TooManyConnectionsFromAddress => "too many connections from your address",
        "trop de connexions depuis votre adresse";
    SaslCancelled => "authentication cancelled", "authentification annulée";
    SaslResponseTooLong => "SASL response too long", "réponse SASL trop longue";
    SaslExchangeOver => "the authentication exchange is over",
        "l'échange d'authentification est terminé";
    SaslLineTooLong => "the line is too long", "la ligne est trop longue";
    SaslNotBase64 => "the line is not valid base64", "la ligne n'est pas du base64 valide";
    SaslEmptyAnswerExpected => "expected an empty answer to the server's final SCRAM message",
        "une réponse vide au dernier message SCRAM du serveur était attendue";
    SaslInitialTooLong => "the initial response is too long", "la réponse initiale est trop longue";
    SaslInitialNotBase64 => "the initial response is not valid base64",
        "la réponse initiale n'est pas du base64 valide";
    CramMd5NoInitial => "CRAM-MD5 takes no initial response",
        "CRAM-MD5 ne prend pas de réponse initiale";
    CramMd5Shape => "CRAM-MD5 expects a user name, a space and 32 hex digits",
        "CRAM-MD5 attend un nom d'utilisateur, une espace et 32 chiffres hexadécimaux";
    LoginNameInvalid => "the LOGIN user name is empty or not UTF-8",
        "le nom d'utilisateur de LOGIN est vide ou n'est pas de l'UTF-8";
    ExternalNotUtf8 => "the EXTERNAL authorization identity is not UTF-8",
        "l'identité d'autorisation d'EXTERNAL n'est pas de l'UTF-8";
    ScramNotUtf8 => "the SCRAM message is not UTF-8", "le message SCRAM n'est pas de l'UTF-8";
    ScramNotClientFirst => "not a SCRAM client-first message",
        "ce n'est pas un premier message client SCRAM";
    ScramNoChannelBinding => "SCRAM channel binding is not supported (use SCRAM-SHA-256, not -PLUS)",
        "la liaison de canal SCRAM n'est pas prise en charge (utilisez SCRAM-SHA-256, pas -PLUS)";
    ScramGs2Flag => "the SCRAM GS2 flag must be n, y or p=",
        "l'indicateur GS2 de SCRAM doit être n, y ou p=";
    ScramGs2Header => "the SCRAM GS2 header holds something other than a=",
        "l'en-tête GS2 de SCRAM contient autre chose que a=";
    ScramNoExtensions => "SCRAM extensions (m=) are not supported",
        "les extensions SCRAM (m=) ne sont pas prises en charge";
    ScramFirstStartsWithN => "the SCRAM client-first message must start with n=",
        "le premier message client SCRAM doit commencer par n=";
    ScramFirstNoNonce => "the SCRAM client-first message has no r= after n=",
        "le premier message client SCRAM n'a pas de r= après n=";
    ScramNonceCharacter => "the SCRAM nonce holds a character it may not",
        "le nonce SCRAM contient un caractère interdit";
    ScramNotClientFinal => "not a SCRAM client-final message",
        "ce n'est pas un dernier message client SCRAM";
    ScramFinalEndsWithP => "the SCRAM client-final message must end with p=",
        "le dernier message client SCRAM doit finir par p=";
    ScramFinalAttributes => "the SCRAM client-final message needs c=, r= and p=",
        "le dernier message client SCRAM doit contenir c=, r= et p=";
    ScramFinalStartsWithC => "the SCRAM client-final message must start with c=",
        "le dernier message client SCRAM doit commencer par c=";
    ScramFinalNoNonce => "the SCRAM client-final message has no r= after c=",
        "le dernier message client SCRAM n'a pas de r= après c=";
    ScramBindingNotBase64 => "the SCRAM channel binding (c=) is not valid base64",
        "la liaison de canal SCRAM (c=) n'est pas du base64 valide";
    ScramProofShape => "the SCRAM proof (p=) is not the base64 of 32 bytes",
        "la preuve SCRAM (p=) n'est pas le base64 de 32 octets";
    ScramNameEmpty => "a SCRAM name is empty", "un nom SCRAM est vide";
    ScramNameEscape => "a '=' in a SCRAM name is not followed by 2C or 3D",
        "un '=' dans un nom SCRAM n'est pas suivi de 2C ou 3D";
    ScramNameProhibited => "a SCRAM name holds a character SASLprep prohibits",
        "un nom SCRAM contient un caractère que SASLprep interdit";
    ScramMalformed => "a SCRAM attribute is malformed", "un attribut SCRAM est mal formé";
    OAuthShape => "the bearer-token message is malformed",
        "le message du jeton porteur est mal formé";
    OAuthChannelBinding => "OAUTHBEARER channel binding is not supported",
        "la liaison de canal d'OAUTHBEARER n'est pas prise en charge";
    OAuthNoToken => "the message holds no auth=Bearer token",
        "le message ne contient pas de jeton auth=Bearer";
    OAuthTokenTooLong => "the bearer token is longer than 8192 octets",
        "le jeton porteur dépasse 8192 octets";
    PlainShape => "PLAIN expects authzid NUL user NUL password",
        "PLAIN attend authzid NUL utilisateur NUL mot de passe";
    PlainNeedsCredentials => "PLAIN needs a user name and a password",
        "PLAIN attend un nom d'utilisateur et un mot de passe";
    PlainNotUtf8 => "the PLAIN identities are not UTF-8",
        "les identités de PLAIN ne sont pas de l'UTF-8";
    UserNameTooLong => "the user name is longer than 255 octets",
        "le nom d'utilisateur dépasse 255 octets";
    PasswordTooLong => "the password is longer than 1024 octets",
        "le mot de passe dépasse 1024 octets";
}

impl fmt::Display for Msg {
    /// The English text, for logs (placeholders left empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Lang::En.render(*self, &[]).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::is_nfc;

    /// The `{n}` placeholders of a template, sorted.
    fn placeholders(t: &str) -> Vec<String> {
        let mut v: Vec<String> = t
            .split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(n, _)| n.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn every_text_exists_in_every_language_with_the_same_placeholders() {
        assert!(Msg::ALL.len() > 50);
        for &msg in Msg::ALL {
            let en = Lang::En.template(msg);
            for lang in Lang::ALL {
                let t = lang.template(msg);
                assert!(!t.trim().is_empty(), "{msg:?} is empty in {lang}");
                assert!(
                    !t.contains(['\r', '\n']),
                    "{msg:?} in {lang} is not one line"
                );
                assert!(is_nfc(t), "{msg:?} in {lang} is not NFC (RFC 5198)");
                assert_eq!(placeholders(t), placeholders(en), "{msg:?} in {lang}");
            }
        }
    }

    /// A French text the same as the English one is allowed only where nothing in it is
    /// English (numbers, "message", "octet", punctuation).
    #[test]
    fn french_texts_are_french() {
        let same_in_both = [
            Msg::MessagesOne,
            Msg::MessagesMany,
            Msg::OctetsOne,
            Msg::OctetsMany,
            Msg::Summary,
            Msg::RetrOctets,
        ];
        for &msg in Msg::ALL {
            if !same_in_both.contains(&msg) {
                assert_ne!(Lang::Fr.template(msg), Lang::En.template(msg), "{msg:?}");
            }
        }
    }

    #[test]
    fn render_fills_placeholders() {
        let t = Lang::Fr.render(Msg::SigningOffDeleted, &[&"2 messages", &0]);
        assert_eq!(
            t.to_string(),
            "au revoir (suppression de 2 messages, il en reste 0)"
        );
        assert_eq!(
            Lang::En.render(Msg::LoggedIn, &[&"a", &"b"]).to_string(),
            "a has b"
        );
        assert_eq!(Msg::SendPass.to_string(), "send PASS");
        assert_eq!(Msg::AlreadyDeleted.to_string(), "message  already deleted");
    }

    #[test]
    fn counts_follow_each_grammar() {
        let c = |l: Lang, n| l.count(n, Msg::MessagesOne, Msg::MessagesMany);
        assert_eq!(c(Lang::En, 0), "0 messages");
        assert_eq!(c(Lang::En, 1), "1 message");
        assert_eq!(c(Lang::Fr, 0), "0 message");
        assert_eq!(c(Lang::Fr, 1), "1 message");
        assert_eq!(c(Lang::Fr, 2), "2 messages");
    }

    #[test]
    fn lookup_of_language_ranges() {
        assert_eq!(Lang::lookup("fr"), Some(Lang::Fr));
        assert_eq!(Lang::lookup("FR"), Some(Lang::Fr));
        assert_eq!(Lang::lookup("fr-CA"), Some(Lang::Fr));
        assert_eq!(Lang::lookup("fr-Latn-CA-x-a"), Some(Lang::Fr));
        assert_eq!(Lang::lookup("en-US"), Some(Lang::En));
        assert_eq!(Lang::lookup("de"), None);
        assert_eq!(Lang::lookup("de-fr"), None);
        assert_eq!(Lang::lookup("frx"), None);
        for bad in [
            "",
            "*",
            "fr-",
            "-fr",
            "f r",
            "fr_CA",
            "françai",
            "abcdefghi",
            "1fr",
        ] {
            assert_eq!(Lang::lookup(bad), None, "{bad:?}");
        }
        assert_eq!(Lang::from_tag("fr-CA"), None);
    }
}
