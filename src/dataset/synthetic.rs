//! The `synthetic` dataset kind: held-out scenes of the toy's world ([`crate::toy::world`]),
//! rendered once from the descriptor's `seed` and `size` into class folders
//! (`<root>/<shape>/<index>.png`) and read from there like any image folder. The scenes are
//! clean (no words): attacks write on them. Their stream is disjoint from the training batches.

use std::path::{Path, PathBuf};

use rand::SeedableRng;

use super::descriptor::DatasetError;
use crate::toy::world::{World, SHAPES};

/// Bumped whenever the world's rendering changes, so stale folders are rendered anew.
pub const WORLD_VERSION: u32 = 1;

/// The default folder of a synthetic dataset: `<cache>/synthetic/<name>-seed<S>-n<N>-v<V>`.
pub fn default_root(name: &str, seed: u64, size: usize) -> PathBuf {
    crate::registry::cache_dir(None)
        .join("synthetic")
        .join(format!("{name}-seed{seed}-n{size}-v{WORLD_VERSION}"))
}

/// The marker a complete folder holds.
const MARKER: &str = "synthetic.json";

/// Renders the `size` scenes of `seed` into `root` unless a complete rendering is there
/// (written into a temporary sibling, then renamed, so an interrupted rendering leaves nothing).
pub fn ensure_rendered(root: &Path, seed: u64, size: usize) -> Result<(), DatasetError> {
    let stamp = serde_json::json!({"seed": seed, "size": size, "world_version": WORLD_VERSION});
    if let Ok(t) = std::fs::read_to_string(root.join(MARKER)) {
        if serde_json::from_str::<serde_json::Value>(&t).ok().as_ref() == Some(&stamp) {
            return Ok(());
        }
        return Err(err(
            root,
            format!("holds another synthetic rendering ({t}); remove it or set another `path`"),
        ));
    }
    if root.exists()
        && std::fs::read_dir(root)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(err(
            root,
            "exists and is not a synthetic dataset folder".into(),
        ));
    }
    let parent = root.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| err(parent, format!("cannot create: {e}")))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        root.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let world = World::new(crate::toy::IMAGE_SIZE, 0.0);
    for shape in SHAPES {
        std::fs::create_dir_all(tmp.join(shape)).map_err(|e| err(&tmp, e.to_string()))?;
    }
    for i in 0..size {
        let scene = scene(&world, seed, i);
        let file = tmp.join(SHAPES[scene.shape]).join(format!("{i:05}.png"));
        world
            .render(&scene)
            .save(&file)
            .map_err(|e| err(&file, format!("cannot write: {e}")))?;
    }
    std::fs::write(tmp.join(MARKER), stamp.to_string() + "\n")
        .map_err(|e| err(&tmp, e.to_string()))?;
    let _ = std::fs::remove_dir(root);
    std::fs::rename(&tmp, root).map_err(|e| err(root, format!("cannot create: {e}")))?;
    Ok(())
}

/// Scene `i` of the dataset seeded `seed`.
pub fn scene(world: &World, seed: u64, i: usize) -> crate::toy::world::Scene {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::toy::train::stream(
        seed,
        crate::toy::train::DATASET_STREAM,
        i as u64,
    ));
    world.clean_scene(&mut rng)
}

fn err(path: &Path, message: String) -> DatasetError {
    DatasetError {
        path: path.display().to_string(),
        message,
    }
}
