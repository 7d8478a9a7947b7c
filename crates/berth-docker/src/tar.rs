//! The one tar archive berth sends the engine: a private file and its directory, owned by the
//! sandbox's user (the engine's archive API takes a tar stream; this writes the POSIX ustar
//! format, which every engine reads).

/// Size of a tar block.
const BLOCK: usize = 512;

/// An archive holding `path` (absolute, `/DIR/FILE`: one directory under the root) with
/// `content`, mode 0400, and its directory, mode 0700, both owned by `user`.
pub fn private_file(path: &str, content: &[u8], user: (u32, u32)) -> Result<Vec<u8>, String> {
    let rel = path.strip_prefix('/').ok_or_else(|| format!("{path} is not an absolute path"))?;
    let (dir, name) = rel.split_once('/').ok_or_else(|| format!("{path} is not /DIR/FILE"))?;
    if dir.is_empty() || name.is_empty() || name.contains('/') || rel.len() > 99 || dir == ".." || name == ".." {
        return Err(format!("{path} is not /DIR/FILE (at most 99 characters)"));
    }
    let mut out = Vec::with_capacity(3 * BLOCK + content.len().next_multiple_of(BLOCK) + 2 * BLOCK);
    out.extend(header(&format!("{dir}/"), 0o700, user, 0, b'5'));
    out.extend(header(rel, 0o400, user, content.len() as u64, b'0'));
    out.extend_from_slice(content);
    out.resize(out.len().next_multiple_of(BLOCK), 0);
    // Two zero blocks end the archive.
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

fn header(name: &str, mode: u32, (uid, gid): (u32, u32), size: u64, kind: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let octal = |h: &mut [u8; BLOCK], at: usize, width: usize, v: u64| {
        let text = format!("{v:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h, 100, 8, mode.into());
    octal(&mut h, 108, 8, uid.into());
    octal(&mut h, 116, 8, gid.into());
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_tar_reads_it_with_owner_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar");
        std::fs::write(&archive, private_file("/berth/spec.json", b"{\"secret\": 1}", (1000, 1001)).unwrap()).unwrap();
        let out =
            std::process::Command::new("tar").args(["-tvf"]).arg(&archive).arg("--numeric-owner").output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = listing.lines().collect();
        assert!(lines[0].starts_with("drwx------ 1000/1001") && lines[0].ends_with("berth/"), "{listing}");
        assert!(lines[1].starts_with("-r-------- 1000/1001") && lines[1].ends_with("berth/spec.json"), "{listing}");
        let out =
            std::process::Command::new("tar").args(["-xOf"]).arg(&archive).arg("berth/spec.json").output().unwrap();
        assert_eq!(out.stdout, b"{\"secret\": 1}");
    }

    #[test]
    fn only_one_directory_under_the_root() {
        for bad in ["relative/x", "/x", "/a/b/c", "/../x", "/a/"] {
            assert!(private_file(bad, b"", (0, 0)).is_err(), "{bad}");
        }
    }
}
