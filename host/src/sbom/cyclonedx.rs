//! [`Dependencies`] as a CycloneDX 1.5 JSON document (`sbom.cdx.json`), and back.
//!
//! The app is `metadata.component` (type `application`, the SHA-256 of its source); the
//! stack is an `operating-system` component; each buildpack an `application` component with
//! `dea:role` = `buildpack`; each download a `file` component whose hash is the verified
//! SHA-256 and whose external references are the URL asked for and the URL used. Facts with
//! no CycloneDX field are properties in the `dea:` namespace. `dependencies` says which
//! buildpack brought in which download.
//!
//! The document is deterministic: `metadata.timestamp` only when `SOURCE_DATE_EPOCH` is
//! set (and then that time), and a `serialNumber` derived from the rest of the document.

use super::{AppSource, BuildpackUsed, Dependencies, DependencyError, DigestOf, Download};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file name inside the droplet.
pub const FILE_NAME: &str = "sbom.cdx.json";

/// The subset of CycloneDX 1.5 this agent writes and reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bom {
    pub bom_format: String,
    pub spec_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    pub version: u32,
    pub metadata: Metadata,
    #[serde(default)]
    pub components: Vec<Component>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    pub tools: Tools,
    pub component: Component,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Property>,
}

/// CycloneDX 1.5's form of `metadata.tools` (the 1.4 array is deprecated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tools {
    #[serde(default)]
    pub components: Vec<Component>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "bom-ref", default, skip_serializing_if = "Option::is_none")]
    pub bom_ref: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<Hash>,
    #[serde(
        rename = "externalReferences",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_references: Vec<ExternalReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hash {
    pub alg: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalReference {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Property {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    #[serde(rename = "ref")]
    pub reference: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

const APP_REF: &str = "app";

fn property(name: &str, value: impl ToString) -> Property {
    Property {
        name: name.to_string(),
        value: value.to_string(),
    }
}

fn sha256(content: &str) -> Vec<Hash> {
    vec![Hash {
        alg: "SHA-256".into(),
        content: content.to_string(),
    }]
}

fn buildpack_ref(id: &str) -> String {
    format!("buildpack:{id}")
}

/// The last path segment of a URL, as a download's name.
fn file_name(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| url.to_string())
}

impl Bom {
    /// The document for `deps`, written by dea `tool_version`. `source_date_epoch` is the
    /// value of `SOURCE_DATE_EPOCH`, if set.
    pub fn new(deps: &Dependencies, tool_version: &str, source_date_epoch: Option<&str>) -> Bom {
        let timestamp = source_date_epoch
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
            .map(|t| t.to_string());
        let app = Component {
            kind: "application".into(),
            bom_ref: Some(APP_REF.into()),
            name: "app".into(),
            version: None,
            hashes: sha256(&deps.app.sha256),
            external_references: Vec::new(),
            properties: vec![property("dea:digest-of", deps.app.digest_of.as_str())],
        };
        let stack_ref = format!("stack:{}", deps.stack);
        let mut components = vec![Component {
            kind: "operating-system".into(),
            bom_ref: Some(stack_ref.clone()),
            name: deps.stack.clone(),
            version: None,
            hashes: Vec::new(),
            external_references: Vec::new(),
            properties: vec![property("dea:role", "stack")],
        }];
        let mut dependencies = vec![Dependency {
            reference: APP_REF.into(),
            depends_on: std::iter::once(stack_ref)
                .chain(deps.buildpacks.iter().map(|bp| buildpack_ref(&bp.id)))
                .collect(),
        }];
        for bp in &deps.buildpacks {
            components.push(Component {
                kind: "application".into(),
                bom_ref: Some(buildpack_ref(&bp.id)),
                name: bp.id.clone(),
                version: Some(bp.version.clone()),
                hashes: sha256(&bp.sha256),
                external_references: Vec::new(),
                properties: vec![
                    property("dea:role", "buildpack"),
                    property("dea:buildpack-kind", &bp.kind),
                    property("dea:digest-of", bp.digest_of.as_str()),
                ],
            });
        }
        for (index, download) in deps.downloads.iter().enumerate() {
            let reference = format!("download:{}", index + 1);
            let mut properties = vec![
                property("dea:role", "download"),
                property("dea:url-asked", &download.url_asked),
                property("dea:url-used", &download.url_used),
                property("dea:size", download.size),
                property("dea:buildpack", &download.buildpack),
                property("dea:phase", &download.phase),
                property("dea:pinned", download.pinned),
            ];
            if let Some(by) = &download.pinned_by {
                properties.push(property("dea:pinned-by", by));
            }
            components.push(Component {
                kind: "file".into(),
                bom_ref: Some(reference.clone()),
                name: file_name(&download.url_asked),
                version: None,
                hashes: sha256(&download.sha256),
                external_references: vec![
                    ExternalReference {
                        kind: "distribution".into(),
                        url: download.url_asked.clone(),
                        comment: Some("URL asked for".into()),
                    },
                    ExternalReference {
                        kind: "distribution".into(),
                        url: download.url_used.clone(),
                        comment: Some("URL used (after mirror rules)".into()),
                    },
                ],
                properties,
            });
            let owner = buildpack_ref(&download.buildpack);
            match dependencies.iter_mut().find(|d| d.reference == owner) {
                Some(dependency) => dependency.depends_on.push(reference),
                None => dependencies.push(Dependency {
                    reference: owner,
                    depends_on: vec![reference],
                }),
            }
        }
        let mut bom = Bom {
            bom_format: "CycloneDX".into(),
            spec_version: "1.5".into(),
            serial_number: None,
            version: 1,
            metadata: Metadata {
                timestamp,
                tools: Tools {
                    components: vec![Component {
                        kind: "application".into(),
                        bom_ref: None,
                        name: "dea".into(),
                        version: Some(tool_version.into()),
                        hashes: Vec::new(),
                        external_references: Vec::new(),
                        properties: Vec::new(),
                    }],
                },
                component: app,
                properties: vec![
                    property("dea:stack", &deps.stack),
                    property("dea:pins-required", deps.pins_required),
                    property("dea:fully-pinned", deps.fully_pinned),
                ],
            },
            components,
            dependencies,
        };
        // The same content, the same serial number: a UUID from the document's own digest.
        let digest = Sha256::digest(bom.to_json());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        bom.serial_number = Some(format!("urn:uuid:{uuid}"));
        bom
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// Reads a document this agent wrote (as `dea sbom` does from a droplet).
    pub fn parse(json: &[u8]) -> Result<Bom, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The facts back out of the document.
    pub fn dependencies(&self) -> Result<Dependencies, DependencyError> {
        let first_hash = |c: &Component| {
            c.hashes
                .iter()
                .find(|h| h.alg == "SHA-256")
                .map(|h| h.content.clone())
                .ok_or_else(|| DependencyError::Missing(format!("{}: SHA-256", c.name)))
        };
        let meta = &self.metadata;
        let app = AppSource {
            sha256: first_hash(&meta.component)?,
            digest_of: digest_of(&meta.component)?,
        };
        let stack = get(&meta.properties, "dea:stack", "metadata")?.to_string();
        let flag = |name: &str| get(&meta.properties, name, "metadata").map(|v| v == "true");
        let mut buildpacks = Vec::new();
        let mut downloads = Vec::new();
        for c in &self.components {
            match c.properties.iter().find(|p| p.name == "dea:role") {
                Some(p) if p.value == "buildpack" => buildpacks.push(BuildpackUsed {
                    id: c.name.clone(),
                    version: c.version.clone().unwrap_or_default(),
                    kind: get(&c.properties, "dea:buildpack-kind", &c.name)?.to_string(),
                    sha256: first_hash(c)?,
                    digest_of: digest_of(c)?,
                }),
                Some(p) if p.value == "download" => {
                    let prop = |name: &str| get(&c.properties, name, &c.name).map(str::to_string);
                    downloads.push(Download {
                        buildpack: prop("dea:buildpack")?,
                        phase: prop("dea:phase")?,
                        url_asked: prop("dea:url-asked")?,
                        url_used: prop("dea:url-used")?,
                        sha256: first_hash(c)?,
                        size: prop("dea:size")?.parse().map_err(|_| {
                            DependencyError::Missing(format!("{}: a numeric dea:size", c.name))
                        })?,
                        pinned: prop("dea:pinned")? == "true",
                        pinned_by: prop("dea:pinned-by").ok(),
                    });
                }
                _ => {}
            }
        }
        Ok(Dependencies {
            app,
            stack,
            buildpacks,
            downloads,
            pins_required: flag("dea:pins-required")?,
            fully_pinned: flag("dea:fully-pinned")?,
        })
    }
}

fn get<'a>(properties: &'a [Property], name: &str, of: &str) -> Result<&'a str, DependencyError> {
    properties
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
        .ok_or_else(|| DependencyError::Missing(format!("{of}: property {name}")))
}

fn digest_of(c: &Component) -> Result<DigestOf, DependencyError> {
    let value = get(&c.properties, "dea:digest-of", &c.name)?;
    DigestOf::parse(value)
        .ok_or_else(|| DependencyError::Missing(format!("{}: a known dea:digest-of", c.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps() -> Dependencies {
        Dependencies {
            app: AppSource {
                sha256: "aa".repeat(32),
                digest_of: DigestOf::Tree,
            },
            stack: "cflinuxfs4".into(),
            buildpacks: vec![BuildpackUsed {
                id: "node".into(),
                version: "0.1.0".into(),
                kind: "wasm".into(),
                sha256: "bb".repeat(32),
                digest_of: DigestOf::File,
            }],
            downloads: vec![Download {
                buildpack: "node".into(),
                phase: "compile".into(),
                url_asked: "https://up.example/dl/node.tgz".into(),
                url_used: "http://127.0.0.1:9/m/node.tgz".into(),
                sha256: "cc".repeat(32),
                size: 42,
                pinned: true,
                pinned_by: Some("buildpack".into()),
            }],
            pins_required: false,
            fully_pinned: true,
        }
    }

    #[test]
    fn the_facts_survive_the_document_and_the_document_is_deterministic() {
        let bom = Bom::new(&deps(), "0.1.0", None);
        assert_eq!(
            bom.metadata.timestamp, None,
            "no clock without SOURCE_DATE_EPOCH"
        );
        assert_eq!(bom.to_json(), Bom::new(&deps(), "0.1.0", None).to_json());
        let parsed = Bom::parse(&bom.to_json()).expect("parses");
        assert_eq!(parsed, bom);
        assert_eq!(parsed.dependencies().expect("facts"), deps());
        assert_eq!(bom.components[2].name, "node.tgz");

        let mut other = deps();
        other.downloads[0].sha256 = "dd".repeat(32);
        assert_ne!(
            Bom::new(&other, "0.1.0", None).serial_number,
            bom.serial_number,
            "the serial number follows the content"
        );
        let dated = Bom::new(&deps(), "0.1.0", Some("1700000000"));
        assert_eq!(
            dated.metadata.timestamp.as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
    }
}
