//! Storage choices (RECORDING.md §7): a configured name, `local`, or an inline bucket. Inline
//! secrets are sealed under the app's newest secret before they are kept (apps.json, task
//! files, the cluster's shared copy) and opened only when a recording starts.

use crate::config::{Config, StorageConfig};
use crate::store::AppStore;
use std::sync::Arc;
use tessera_model::{App, AppError, AppId, InlineStorage, S3Settings, StorageRef};

/// An app's secrets as `(kid, secret)`, what sealed storage secrets open with.
fn keyring(app: &App) -> Vec<(String, String)> {
    app.secrets.iter().map(|k| (k.kid.as_str().to_string(), k.secret.clone())).collect()
}

fn invalid(field: &str, reason: impl Into<String>) -> AppError {
    AppError::Invalid { field: field.into(), reason: reason.into() }
}

/// A configured storage as bucket settings (`None` for a local one).
pub fn configured(config: &Config, name: &str) -> Option<Option<S3Settings>> {
    match config.storage.get(name)? {
        StorageConfig::Local => Some(None),
        StorageConfig::S3 { bucket, region, endpoint, access_key_id, secret_access_key, path_style, key_prefix, public_base_url } => Some(Some(S3Settings {
            bucket: bucket.clone(),
            region: region.clone(),
            endpoint: endpoint.clone(),
            access_key_id: access_key_id.clone(),
            secret_access_key: Some(secret_access_key.clone()),
            secret_access_key_sealed: None,
            secret_access_key_env: None,
            path_style: *path_style,
            key_prefix: key_prefix.clone(),
            public_base_url: public_base_url.clone(),
        })),
    }
}

/// Checks a storage choice from a request (`field` names it) and seals an inline secret.
pub fn accept(choice: StorageRef, field: &str, config: &Config, app: &App) -> Result<StorageRef, AppError> {
    match choice {
        StorageRef::Named(n) if n == "local" || config.storage.contains_key(&n) => Ok(StorageRef::Named(n)),
        StorageRef::Named(n) => Err(invalid(field, format!("no storage named '{n}'"))),
        StorageRef::Inline(InlineStorage::Local {}) => Ok(StorageRef::Inline(InlineStorage::Local {})),
        StorageRef::Inline(InlineStorage::S3(mut s)) => {
            let field = format!("{field}.s3");
            if s.secret_access_key_sealed.is_some() {
                return Err(invalid(&format!("{field}.secret_access_key_sealed"), "is set by the server; give secret_access_key or secret_access_key_env"));
            }
            s.validate(&field)?;
            if let Some(plain) = s.secret_access_key.take() {
                let newest = app.newest_secret();
                s.secret_access_key_sealed = Some(tessera_tasks::recording::s3::seal(&plain, newest.kid.as_str(), &newest.secret));
            }
            Ok(StorageRef::Inline(InlineStorage::S3(s)))
        }
    }
}

/// The server's answer to "which bucket, with which secret" for the recordings.
pub fn resolver(config: Arc<Config>, store: Arc<AppStore>) -> tessera_tasks::recording::StorageResolver {
    Arc::new(move |app: &AppId, choice: &StorageRef| match choice {
        StorageRef::Named(n) if n == "local" => Ok(None),
        StorageRef::Named(n) => match configured(&config, n) {
            None => Err(format!("no storage named '{n}' is configured")),
            Some(None) => Ok(None),
            Some(Some(s)) => {
                let secret = s.secret_access_key.clone().unwrap_or_default();
                Ok(Some((s, secret)))
            }
        },
        StorageRef::Inline(InlineStorage::Local {}) => Ok(None),
        StorageRef::Inline(InlineStorage::S3(s)) => {
            let secret = if let Some(env) = &s.secret_access_key_env {
                std::env::var(env).map_err(|_| format!("the environment variable {env} (the bucket's secret key) is not set"))?
            } else if let Some(sealed) = &s.secret_access_key_sealed {
                let apps = store.snapshot();
                let app = apps.get(app).ok_or_else(|| format!("app '{app}' is gone"))?;
                let secrets = keyring(app);
                tessera_tasks::recording::s3::unseal(sealed, &secrets).ok_or("the bucket's secret key was sealed under an app secret that is gone; give it again")?
            } else {
                s.secret_access_key.clone().ok_or("the bucket has no secret key")?
            };
            Ok(Some((s.clone(), secret)))
        }
    })
}

/// Re-seals an app's inline default storage under its newest secret (after the secret it was
/// sealed under is removed, the app can still open it).
pub fn reseal(app: &mut App, removed_secrets: &[(String, String)]) {
    let newest = app.newest_secret().clone();
    let mut all = keyring(app);
    all.extend_from_slice(removed_secrets);
    let StorageRef::Inline(InlineStorage::S3(s)) = &mut app.default_storage else { return };
    let Some(sealed) = &s.secret_access_key_sealed else { return };
    if let Some(plain) = tessera_tasks::recording::s3::unseal(sealed, &all) {
        s.secret_access_key_sealed = Some(tessera_tasks::recording::s3::seal(&plain, newest.kid.as_str(), &newest.secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_model::AppId;

    fn app() -> App {
        let mut app = App::new(AppId::parse("shop").unwrap(), 0);
        app.add_secret(tessera_model::Kid::parse("k9").unwrap(), "newest-secret-0123456789".into(), 1).unwrap();
        app
    }

    fn inline(secret: &str) -> StorageRef {
        serde_json::from_value(
            serde_json::json!({"s3": {"bucket": "recordings", "endpoint": "http://127.0.0.1:9000", "access_key_id": "AK", "secret_access_key": secret, "path_style": true}}),
        )
        .unwrap()
    }

    #[test]
    fn an_inline_bucket_is_kept_sealed_and_opened_for_the_recording() {
        let mut config = Config::default();
        config.storage.insert(
            "archive".into(),
            StorageConfig::S3 {
                bucket: "arch".into(),
                region: "eu-west-1".into(),
                endpoint: "https://s3.example".into(),
                access_key_id: "AK2".into(),
                secret_access_key: "from-config".into(),
                path_style: false,
                key_prefix: "t/".into(),
                public_base_url: None,
            },
        );
        let mut app = app();
        let kept = accept(inline("plain-secret"), "default_storage", &config, &app).unwrap();
        let text = serde_json::to_string(&kept).unwrap();
        assert!(!text.contains("plain-secret") && text.contains("\"secret_access_key_sealed\":\"k9:"), "{text}");
        assert!(matches!(accept(StorageRef::Named("nope".into()), "storage", &config, &app), Err(AppError::Invalid { field, .. }) if field == "storage"));
        assert_eq!(accept(StorageRef::Named("archive".into()), "storage", &config, &app).unwrap(), StorageRef::Named("archive".into()));

        app.default_storage = kept.clone();
        let store = Arc::new(AppStore::in_memory(vec![app.clone()]));
        let resolve = resolver(Arc::new(config), store);
        let (s3, secret) = resolve(&app.id, &kept).unwrap().unwrap();
        assert_eq!((s3.bucket.as_str(), secret.as_str()), ("recordings", "plain-secret"));
        let (s3, secret) = resolve(&app.id, &StorageRef::Named("archive".into())).unwrap().unwrap();
        assert_eq!((s3.key_prefix.as_str(), secret.as_str()), ("t/", "from-config"));
        assert_eq!(resolve(&app.id, &StorageRef::Named("local".into())).unwrap(), None);

        // Removing the secret it was sealed under re-seals it under the newest one left.
        let removed = vec![("k9".to_string(), "newest-secret-0123456789".to_string())];
        app.remove_secret("k9").unwrap();
        reseal(&mut app, &removed);
        let StorageRef::Inline(InlineStorage::S3(s)) = &app.default_storage else { panic!() };
        let sealed = s.secret_access_key_sealed.clone().unwrap();
        assert!(sealed.starts_with("k1:"), "{sealed}");
        let secrets = keyring(&app);
        assert_eq!(tessera_tasks::recording::s3::unseal(&sealed, &secrets).as_deref(), Some("plain-secret"));
    }
}
