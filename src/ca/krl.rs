//! OpenSSH Key Revocation Lists, written from the audit store's revocations so
//! targets outside sallyport (plain sshd with `RevokedKeys`) honour them too.
//! Format: OpenSSH PROTOCOL.krl — a header, then one certificates section for
//! our user CA holding a serial list and a key-id list. Revocations by subject
//! become the key ids of every certificate issued to that subject.

use russh::keys::ssh_key::PublicKey;

use super::Error;

/// "SSHKRL\n\0" (PROTOCOL.krl `KRL_MAGIC`).
const KRL_MAGIC: u64 = 0x5353_484b_524c_0a00;
const KRL_FORMAT_VERSION: u32 = 1;
const KRL_SECTION_CERTIFICATES: u8 = 1;
const KRL_SECTION_CERT_SERIAL_LIST: u8 = 0x20;
const KRL_SECTION_CERT_KEY_ID: u8 = 0x23;

/// What to put in a KRL.
#[derive(Debug, Clone, Default)]
pub struct KrlContents {
    /// Revoked certificate serials (of certificates signed by the CA).
    pub serials: Vec<u64>,
    /// Revoked key ids.
    pub key_ids: Vec<String>,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(s.len()).map_err(|_| Error::Request("KRL field too long".into()))?;
    put_u32(out, len);
    out.extend_from_slice(s);
    Ok(())
}

/// Encode a KRL revoking `contents` for certificates signed by `ca`.
/// `version` should grow with every KRL written (we use the generation time).
pub fn encode(
    ca: &PublicKey,
    contents: &KrlContents,
    version: u64,
    generated: u64,
    comment: &str,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    put_u64(&mut out, KRL_MAGIC);
    put_u32(&mut out, KRL_FORMAT_VERSION);
    put_u64(&mut out, version);
    put_u64(&mut out, generated);
    put_u64(&mut out, 0); // flags
    put_string(&mut out, b"")?; // reserved
    put_string(&mut out, comment.as_bytes())?;

    let mut serials: Vec<u64> = contents
        .serials
        .iter()
        .copied()
        .filter(|s| *s != 0)
        .collect();
    serials.sort_unstable();
    serials.dedup();
    let mut key_ids: Vec<&str> = contents.key_ids.iter().map(String::as_str).collect();
    key_ids.sort_unstable();
    key_ids.dedup();

    let mut section = Vec::new();
    put_string(&mut section, &ca.to_bytes()?)?;
    put_string(&mut section, b"")?; // reserved
    if !serials.is_empty() {
        let mut sub = Vec::new();
        for s in &serials {
            put_u64(&mut sub, *s);
        }
        section.push(KRL_SECTION_CERT_SERIAL_LIST);
        put_string(&mut section, &sub)?;
    }
    if !key_ids.is_empty() {
        let mut sub = Vec::new();
        for k in &key_ids {
            put_string(&mut sub, k.as_bytes())?;
        }
        section.push(KRL_SECTION_CERT_KEY_ID);
        put_string(&mut section, &sub)?;
    }
    out.push(KRL_SECTION_CERTIFICATES);
    put_string(&mut out, &section)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::{Algorithm, PrivateKey};

    #[test]
    fn header_and_sections() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let k = encode(
            ca.public_key(),
            &KrlContents {
                serials: vec![7, 3, 7, 0],
                key_ids: vec!["b".into(), "a".into()],
            },
            5,
            6,
            "c",
        )
        .unwrap();
        assert_eq!(&k[..8], b"SSHKRL\n\0");
        // Serials sorted, deduplicated, zero dropped: 3 then 7.
        let needle: Vec<u8> = [3u64, 7].iter().flat_map(|s| s.to_be_bytes()).collect();
        assert!(k.windows(16).any(|w| w == needle.as_slice()));
        assert_eq!(k.last(), Some(&b'b'));
    }
}
