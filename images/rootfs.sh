# Shared by berth's image builders (images/test-image, deploy/image/build); sourced, not run.
#
# Builds a root filesystem from this machine's own files: binaries found on PATH (or given by
# path), every shared library they load (found with ldd, the whole closure), and the symlinks on
# the way, each file copied once under the directory it really lives in. No registry and no base
# image: the result goes to `docker import`. Its glibc is this machine's, so a berth binary built
# here runs in it.
#
# Use:
#   ROOTFS_LOG_NAME=NAME; source images/rootfs.sh
#   rootfs_add_bins sh cp ...          # from PATH
#   rootfs_add PATH...                 # any file (a symlink brings its target)
#   rootfs_add_rust_libs               # what a Rust binary loads beside libc
#   rootfs_add_closure [DIR...]        # the libraries of everything added, and of DIRs' files
#   rootfs_copy ROOTFS [DIR...]        # copy it all (and DIRs whole) into ROOTFS, with
#                                      # /bin, /lib... links as on this machine, /tmp, /dev...
#   rootfs_hash ROOTFS FILE...         # content hash of ROOTFS and FILEs (the build scripts)

log() { printf '%s: %s\n' "${ROOTFS_LOG_NAME:-rootfs}" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Loaded by a Rust binary beside libc (berth's own ldd), so berth runs in the image.
ROOTFS_RUST_LIBS=(libgcc_s.so.1 libm.so.6)

# canon PATH: sets CANON to the path with its directory resolved (/lib/x -> /usr/lib/x on
# merged-usr), so each file is copied once, under the directory it really lives in.
declare -A rootfs_dir_canon=()
rootfs_canon() {
	local dir="${1%/*}"
	[[ -n "${rootfs_dir_canon[$dir]:-}" ]] || rootfs_dir_canon[$dir]="$(readlink -f "${dir:-/}")"
	CANON="${rootfs_dir_canon[$dir]}/${1##*/}"
}

declare -A rootfs_seen=()
ROOTFS_FILES=()
rootfs_add() {
	local f p
	for f in "$@"; do
		[[ -n "${rootfs_seen[$f]:-}" ]] && continue
		rootfs_seen[$f]=1
		rootfs_canon "$f"
		p="$CANON"
		[[ -n "${rootfs_seen[$p]:-}" && "$p" != "$f" ]] && continue
		rootfs_seen[$p]=1
		ROOTFS_FILES+=("$p")
		# A symlink brings its target.
		if [[ -L "$p" ]]; then rootfs_add "$(readlink -f "$p")"; fi
	done
}

rootfs_add_bins() {
	local b p
	for b in "$@"; do
		p="$(type -P "$b")" || die "'$b' is not installed on this machine"
		rootfs_add "$p"
	done
}

rootfs_add_rust_libs() {
	local lib p
	for lib in "${ROOTFS_RUST_LIBS[@]}"; do
		# awk reads to the end (no `exit`): under pipefail, ldconfig killed by SIGPIPE would fail
		# the assignment and end the script without a word.
		p="$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64|x86_64|aarch64|AArch64/ && !p { p = $NF } END { print p }')"
		[[ -n "$p" ]] || p="$(ldconfig -p | awk -v l="$lib" '$1 == l && !p { p = $NF } END { print p }')"
		[[ -n "$p" ]] || die "library $lib not found (ldconfig -p)"
		rootfs_add "$p"
	done
}

# rootfs_add_closure [DIR...]: adds the shared libraries every ELF file added so far loads, and
# those of every file under DIRs (once per inode: most of git's commands are hard links of one
# file). One ldd run; it lists the whole closure of each file, and skips what is not a dynamic
# executable.
rootfs_add_closure() {
	local lib distinct
	mapfile -t distinct < <({
		for f in "${ROOTFS_FILES[@]}"; do [[ -f "$f" && ! -L "$f" ]] && printf '%s\n' "$f"; done
		for d in "$@"; do find "$d" -type f; done
	} | xargs -d '\n' stat -c '%i %n' | sort -n -u -k1,1 | cut -d' ' -f2-)
	while read -r lib; do
		[[ -n "$lib" ]] && rootfs_add "$lib"
	done < <(ldd "${distinct[@]}" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }' | sort -u)
}

# rootfs_copy ROOTFS [DIR...]: copies every added file, and DIRs whole, preserving symlinks and
# hard links; then this machine's merged-usr links and the usual empty directories.
rootfs_copy() {
	local rootfs="$1" d
	shift
	# Relative paths from /: coreutils 9.1's `cp -a --parents` fails on absolute ones.
	local sources=("${ROOTFS_FILES[@]#/}")
	for d in "$@"; do sources+=("${d#/}"); done
	(cd / && cp -a --parents "${sources[@]}" "$rootfs/")
	for d in bin sbin lib lib64; do
		if [[ -L "/$d" ]]; then
			ln -sfn "$(readlink "/$d")" "$rootfs/$d"
		fi
	done
	mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
	chmod 1777 "$rootfs/tmp"
}

# rootfs_hash ROOTFS FILE...: every entry's path, type, mode and link target, every distinct
# file's bytes, and FILEs' bytes (the scripts that built it), as 16 hex digits.
rootfs_hash() {
	local rootfs="$1"
	shift
	{
		sha256sum "$@" | cut -d' ' -f1
		(cd "$rootfs" && find . -printf '%p %y %m %l\n' | LC_ALL=C sort)
		(cd "$rootfs" && find . -type f -printf '%i %p\n' | LC_ALL=C sort -n -u -k1,1 | cut -d' ' -f2- |
			LC_ALL=C sort | xargs -d '\n' sha256sum)
	} | sha256sum | cut -c1-16
}
