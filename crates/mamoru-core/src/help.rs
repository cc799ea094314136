//! What a parent does when our mail does not arrive: per carrier (and per
//! mail app), short numbered steps to allow the sending domain (受信許可 /
//! 指定受信), with our domain filled in. Pure: the web pages and the mails
//! show these texts, nothing here knows how.
//!
//! The carrier is known from the address's domain ([`Carrier::of_domain`]);
//! an address of another domain gets the list of every help page.

use crate::config::Config;

/// A carrier or mail app with a help page of its own at `/help/{slug}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Docomo,
    Au,
    SoftBank,
    YMobile,
    /// The iPhone's Mail app (iCloud mail, and any account set up in it).
    Iphone,
    /// The mail apps of Android phones (carrier mail apps, Gmail excepted).
    Android,
    Gmail,
}

impl Carrier {
    /// Every help page, in the order the index lists them.
    pub const ALL: [Carrier; 7] =
        [Carrier::Docomo, Carrier::Au, Carrier::SoftBank, Carrier::YMobile, Carrier::Iphone, Carrier::Android, Carrier::Gmail];

    /// The help for an address of `domain` (any case), if its domain says
    /// which one it is. Android mail apps serve every domain, so no domain
    /// names them.
    pub fn of_domain(domain: &str) -> Option<Carrier> {
        let d = domain.to_ascii_lowercase();
        let c = match d.as_str() {
            "docomo.ne.jp" => Carrier::Docomo,
            "ezweb.ne.jp" | "au.com" | "biz.au.com" | "biz.ezweb.ne.jp" | "uqmobile.jp" => Carrier::Au,
            "softbank.ne.jp" | "i.softbank.jp" | "disney.ne.jp" => Carrier::SoftBank,
            "ymobile.ne.jp" | "ymobile1.ne.jp" | "y-mobile.ne.jp" | "yahoo.ne.jp" | "emobile.ne.jp" | "willcom.com"
            | "pdx.ne.jp" | "wcm.ne.jp" => Carrier::YMobile,
            "icloud.com" | "me.com" | "mac.com" => Carrier::Iphone,
            "gmail.com" | "googlemail.com" => Carrier::Gmail,
            _ if d.ends_with(".vodafone.ne.jp") => Carrier::SoftBank,
            _ => return None,
        };
        Some(c)
    }

    /// The last segment of `/help/{slug}`.
    pub fn slug(self) -> &'static str {
        match self {
            Carrier::Docomo => "docomo",
            Carrier::Au => "au",
            Carrier::SoftBank => "softbank",
            Carrier::YMobile => "ymobile",
            Carrier::Iphone => "iphone",
            Carrier::Android => "android",
            Carrier::Gmail => "gmail",
        }
    }

    pub fn from_slug(slug: &str) -> Option<Carrier> {
        Carrier::ALL.into_iter().find(|c| c.slug() == slug)
    }

    /// The name a parent knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Carrier::Docomo => "ドコモ(docomo)",
            Carrier::Au => "au・UQ mobile",
            Carrier::SoftBank => "ソフトバンク(SoftBank)",
            Carrier::YMobile => "ワイモバイル(Y!mobile)",
            Carrier::Iphone => "iPhoneのメールアプリ",
            Carrier::Android => "Androidのメールアプリ",
            Carrier::Gmail => "Gmail",
        }
    }

    /// The numbered steps, our sending domain filled in. Each step is one
    /// short sentence, to read on a phone or a printed page.
    pub fn steps(self, cfg: &Config) -> Vec<String> {
        let dom = &cfg.domain;
        let from = cfg.register_address();
        match self {
            Carrier::Docomo => vec![
                "「My docomo」を開き、dアカウントでログインします。".into(),
                "「設定」から「メール設定」を開きます。".into(),
                "「迷惑メール対策」の「受信リスト設定」を開きます。".into(),
                "「設定を利用する」を選びます。".into(),
                format!("受信するアドレスの欄に「{dom}」と入力します。"),
                "「確認する」を押し、「設定を確定する」を押します。".into(),
            ],
            Carrier::Au => vec![
                "「My au」を開き、au IDでログインします。".into(),
                "「メール設定」から「迷惑メールフィルター」を開きます。".into(),
                "「受信リスト設定」を選び、「有効」にします。".into(),
                format!("入力欄に「{dom}」と入力し、「ドメイン一致」を選びます。"),
                "「変更する」を押し、次の画面でも「OK」を押します。".into(),
            ],
            Carrier::SoftBank => vec![
                "「My SoftBank」を開き、ログインします。".into(),
                "「メール設定」から「迷惑メール対策」を開きます。".into(),
                "「許可するメールの登録」の「登録する」を押します。".into(),
                format!("入力欄に「{dom}」と入力し、「後方一致」を選びます。"),
                "「次へ」を押し、「登録する」を押します。".into(),
            ],
            Carrier::YMobile => vec![
                "「My Y!mobile」を開き、ログインします。".into(),
                "「メール設定」から「迷惑メール対策」を開きます。".into(),
                "「受信許可リスト設定」を開きます。".into(),
                format!("入力欄に「{dom}」と入力し、「後方一致」を選びます。"),
                "「設定する」を押します。".into(),
            ],
            Carrier::Iphone => vec![
                "「メール」アプリを開き、「メールボックス」に戻ります。".into(),
                "「迷惑メール」を開き、このサービスのメールを探します。".into(),
                "見つかったら開いて、「迷惑メールではない」に移動します。".into(),
                format!("「連絡先」アプリで「{from}」を新しい連絡先に登録します。"),
                "携帯会社のアドレスのときは、その会社の設定もしてください。".into(),
            ],
            Carrier::Android => vec![
                "メールアプリを開き、「迷惑メール」のフォルダを開きます。".into(),
                "このサービスのメールがあれば開いて、「迷惑メールではない」を押します。".into(),
                format!("「連絡先」アプリで「{from}」を登録します。"),
                format!("携帯会社の迷惑メール設定で「{dom}」を受信許可にします(各社のページをご覧ください)。"),
            ],
            Carrier::Gmail => vec![
                "Gmailを開き、「迷惑メール」を開きます。".into(),
                "このサービスのメールがあれば開いて、「迷惑メールではないことを報告」を押します。".into(),
                "パソコンのGmailで、右上の歯車から「すべての設定を表示」を開きます。".into(),
                "「フィルタとブロック中のアドレス」の「新しいフィルタを作成」を押します。".into(),
                format!("「From」に「{dom}」と入力し、「フィルタを作成」を押します。"),
                "「迷惑メールにしない」にチェックを入れ、「フィルタを作成」を押します。".into(),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_names_the_carrier() {
        let table = [
            ("docomo.ne.jp", Some(Carrier::Docomo)),
            ("DoCoMo.ne.jp", Some(Carrier::Docomo)),
            ("ezweb.ne.jp", Some(Carrier::Au)),
            ("au.com", Some(Carrier::Au)),
            ("softbank.ne.jp", Some(Carrier::SoftBank)),
            ("i.softbank.jp", Some(Carrier::SoftBank)),
            ("t.vodafone.ne.jp", Some(Carrier::SoftBank)),
            ("ymobile.ne.jp", Some(Carrier::YMobile)),
            ("yahoo.ne.jp", Some(Carrier::YMobile)),
            ("icloud.com", Some(Carrier::Iphone)),
            ("gmail.com", Some(Carrier::Gmail)),
            ("googlemail.com", Some(Carrier::Gmail)),
            ("example.jp", None),
            ("docomo.ne.jp.example", None),
            ("vodafone.ne.jp", None),
        ];
        for (domain, want) in table {
            assert_eq!(Carrier::of_domain(domain), want, "{domain}");
        }
    }

    #[test]
    fn every_help_names_our_domain_in_short_steps() {
        let cfg = Config { domain: "mamoru.example.jp".into(), ..Config::default() };
        for c in Carrier::ALL {
            assert_eq!(Carrier::from_slug(c.slug()), Some(c));
            let steps = c.steps(&cfg);
            assert!((3..=7).contains(&steps.len()), "{c:?}");
            assert!(steps.iter().any(|s| s.contains("mamoru.example.jp")), "{c:?}: {steps:?}");
            for s in &steps {
                assert!(s.chars().count() <= 60, "{c:?}: long step {s}");
            }
        }
        assert_eq!(Carrier::from_slug("x"), None);
    }
}
