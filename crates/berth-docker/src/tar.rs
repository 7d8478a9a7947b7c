//! The one kind of tar archive berth sends the engine: private files and their directories,
//! owned by the sandbox's user (the engine's archive API takes a tar stream; this writes the
//! POSIX ustar format, which every engine reads).

/// Size of a tar block.
const BLOCK: usize = 512;

/// An archive holding each `(path, content)` of `files` in order (each path absolute,
/// `/DIR/FILE`: one directory under the root), mode 0400, and each directory once, before its
/// first file, mode 0700, all owned by `user`. The engine unpacks entries in order, so a file
/// is whole before the next one appears.
pub fn private_files(files: &[(&str, &[u8])], user: (u32, u32)) -> Result<Vec<u8>, String> {
    let size: usize = files.iter().map(|(_, c)| 2 * BLOCK + c.len().next_multiple_of(BLOCK)).sum();
    let mut out = Vec::with_capacity(size + 2 * BLOCK);
    let mut dirs: Vec<&str> = Vec::new();
    for (path, content) in files {
        let rel = path.strip_prefix('/').ok_or_else(|| format!("{path} is not an absolute path"))?;
        let (dir, name) = rel.split_once('/').ok_or_else(|| format!("{path} is not /DIR/FILE"))?;
        if dir.is_empty() || name.is_empty() || name.contains('/') || rel.len() > 99 || dir == ".." || name == ".." {
            return Err(format!("{path} is not /DIR/FILE (at most 99 characters)"));
        }
        if !dirs.contains(&dir) {
            out.extend(header(&format!("{dir}/"), 0o700, user, 0, b'5'));
            dirs.push(dir);
        }
        out.extend(header(rel, 0o400, user, content.len() as u64, b'0'));
        out.extend_from_slice(content);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
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
    fn the_system_tar_reads_them_in_order_with_owner_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("a.tar");
        let files: [(&str, &[u8]); 2] = [("/berth/spec.json", b"{\"secret\": 1}"), ("/berth/claim.json", b"{}")];
        std::fs::write(&archive, private_files(&files, (1000, 1001)).unwrap()).unwrap();
        let out =
            std::process::Command::new("tar").args(["-tvf"]).arg(&archive).arg("--numeric-owner").output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = listing.lines().collect();
        assert!(lines[0].starts_with("drwx------ 1000/1001") && lines[0].ends_with("berth/"), "{listing}");
        assert!(lines[1].starts_with("-r-------- 1000/1001") && lines[1].ends_with("berth/spec.json"), "{listing}");
        // One directory entry, then the files in the order given.
        assert!(lines[2].starts_with("-r-------- 1000/1001") && lines[2].ends_with("berth/claim.json"), "{listing}");
        assert_eq!(lines.len(), 3, "{listing}");
        let out =
            std::process::Command::new("tar").args(["-xOf"]).arg(&archive).arg("berth/spec.json").output().unwrap();
        assert_eq!(out.stdout, b"{\"secret\": 1}");
    }

    #[test]
    fn only_one_directory_under_the_root() {
        for bad in ["relative/x", "/x", "/a/b/c", "/../x", "/a/"] {
            assert!(private_files(&[(bad, b"")], (0, 0)).is_err(), "{bad}");
        }
    }
}
