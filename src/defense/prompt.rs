//! Prompting (prompt hook): template sets that name the confound — `ignore-text` ("a photo of a
//! {}, not text.", …), `with-label` ("a photo of a {} with a label on it.", …) — and template
//! ensembles (`mode=append` adds the set to the run's templates; the class embedding is the
//! normalised mean over every template, CLIP's ensembling). Shipped sets are files in
//! `datasets/templates/`; `set=` also takes any CLIP template set (`openai7`, `imagenet80`) or
//! a template file. Source: the prompt defenses discussed by Goh et al., "Multimodal Neurons in
//! Artificial Neural Networks" (Distill, 2021) and compared in Azuma & Matsui,
//! "Defense-Prefix for Preventing Typographic Attacks on CLIP" (ICCV Workshops 2023).

use crate::zeroshot::TemplateSet;

use super::{Defense, DefenseError, Params};

/// Names of the defense template sets shipped with typoclip.
pub const DEFENSE_TEMPLATE_SETS: [&str; 2] = ["ignore-text", "with-label"];

/// A shipped defense template set.
pub fn builtin(name: &str) -> Option<TemplateSet> {
    let text = match name {
        "ignore-text" => include_str!("../../datasets/templates/ignore-text.txt"),
        "with-label" => include_str!("../../datasets/templates/with-label.txt"),
        _ => return None,
    };
    Some(TemplateSet::parse(name, text).expect("shipped template sets are valid"))
}

/// Replaces (`mode=replace`) or extends (`mode=append`, an ensemble) the run's templates.
#[derive(Debug, Clone)]
pub struct PromptDefense {
    /// The templates it brings.
    pub set: TemplateSet,
    /// Append to the run's templates instead of replacing them.
    pub append: bool,
}

impl PromptDefense {
    /// `prompt:set=ignore-text,mode=replace`.
    pub fn build(p: &mut Params) -> Result<Box<dyn Defense>, DefenseError> {
        let name = p.string("set", Some("ignore-text"))?;
        let mode = p.choice("mode", "replace", &["replace", "append"])?;
        let set = match builtin(&name) {
            Some(s) => s,
            None => TemplateSet::resolve(&name).map_err(|e| {
                p.error(format!(
                    "set: {e} (shipped defense sets: {})",
                    DEFENSE_TEMPLATE_SETS.join(", ")
                ))
            })?,
        };
        p.note("templates_hash", serde_json::json!(set.hash()));
        Ok(Box::new(PromptDefense {
            set,
            append: mode == "append",
        }))
    }
}

impl Defense for PromptDefense {
    fn transform_templates(&self, templates: TemplateSet) -> TemplateSet {
        if self.append {
            let mut all = templates.templates;
            all.extend(
                self.set
                    .templates
                    .iter()
                    .filter(|t| !all.contains(t))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            TemplateSet {
                name: format!("{}+{}", templates.name, self.set.name),
                templates: all,
            }
        } else {
            self.set.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_replace_or_extend_the_templates() {
        let s = crate::defense::DefenseStack::parse(&["prompt:set=ignore-text"]).unwrap();
        let t = s.transform_templates(TemplateSet::builtin("single").unwrap());
        assert_eq!(t.templates[0], "a photo of a {}, not text.");
        assert_eq!(t.name, "ignore-text");
        let s =
            crate::defense::DefenseStack::parse(&["prompt:set=with-label,mode=append"]).unwrap();
        let t = s.transform_templates(TemplateSet::builtin("single").unwrap());
        assert_eq!(t.templates.len(), 5);
        assert_eq!(t.templates[0], "a photo of a {}.");
        assert!(t
            .templates
            .contains(&"a photo of a {} with a label on it.".to_string()));
        let e = crate::defense::DefenseStack::parse(&["prompt:set=nope"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--defense prompt:set=nope: set: nope"), "{e}");
    }
}
