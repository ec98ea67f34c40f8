// Package atomicfile replaces files so that readers, and the file system
// after a crash, see either the old content or the new, never a mix.
//
// It is for Braid's small state files: the WireGuard private key, the PKI,
// the agent's published public key, the operator's state file. WriteFile
// is safe for concurrent use on different paths; concurrent writers of one
// path each succeed and the last rename wins.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile writes data to path with mode perm: it writes a uniquely named
// temporary file in path's directory (mode perm from its creation, so a
// secret is never readable by others, even briefly), syncs it, renames it
// over path and syncs the directory so that the rename itself survives a
// crash. On error path is unchanged and the temporary file is removed.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly after the rename
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}
