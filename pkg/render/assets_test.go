package render

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"image/png"
	"strings"
	"testing"
)

func TestFavicon_IsAnICOHoldingOnePNG(t *testing.T) {
	b := Favicon
	if len(b) > 1024 {
		t.Errorf("len(Favicon) = %d, want at most 1 KiB", len(b))
	}
	if len(b) < 22 {
		t.Fatalf("len(Favicon) = %d, shorter than an ICO header", len(b))
	}
	le := binary.LittleEndian
	if reserved, typ, count := le.Uint16(b[0:]), le.Uint16(b[2:]), le.Uint16(b[4:]); reserved != 0 || typ != 1 || count != 1 {
		t.Fatalf("ICO header = reserved %d, type %d, count %d; want 0, 1 (icon), 1", reserved, typ, count)
	}
	size, offset := le.Uint32(b[14:]), le.Uint32(b[18:])
	if offset != 22 || int(offset)+int(size) != len(b) {
		t.Fatalf("ICO entry: image at %d, %d bytes; want at 22, up to the end (%d bytes)", offset, size, len(b))
	}
	img, err := png.Decode(bytes.NewReader(b[offset:]))
	if err != nil {
		t.Fatalf("ICO image is not a PNG: %v", err)
	}
	if w, h := img.Bounds().Dx(), img.Bounds().Dy(); w != faviconSize || h != faviconSize || int(b[6]) != w || int(b[7]) != h {
		t.Errorf("PNG is %d×%d, entry says %d×%d; want %d×%d", w, h, b[6], b[7], faviconSize, faviconSize)
	}
	// Transparent corners, an opaque middle: a round icon, not a square.
	if _, _, _, a := img.At(0, 0).RGBA(); a != 0 {
		t.Errorf("corner alpha = %d, want 0", a)
	}
	if _, _, _, a := img.At(faviconSize/2, faviconSize-4).RGBA(); a != 0xffff {
		t.Errorf("body alpha = %d, want opaque", a)
	}
}

// robotsAllowed answers whether RFC 9309 rules let any crawler fetch path:
// the longest matching Allow or Disallow in the "User-agent: *" group
// wins, Allow on a tie; no match allows.
func robotsAllowed(t *testing.T, robots []byte, path string) bool {
	t.Helper()
	best, allowed := -1, true
	inStar := false
	sc := bufio.NewScanner(bytes.NewReader(robots))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			if strings.TrimSpace(line) != "" {
				t.Fatalf("robots.txt line %q is not key: value", sc.Text())
			}
			continue
		}
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		switch key {
		case "user-agent":
			inStar = val == "*"
		case "allow", "disallow":
			if inStar && strings.HasPrefix(path, val) && (len(val) > best || len(val) == best && key == "allow") {
				best, allowed = len(val), key == "allow"
			}
		default:
			t.Fatalf("robots.txt has unexpected key %q", key)
		}
	}
	return allowed
}

func TestRobotsTxt_AllowsOnlyTheFilmList(t *testing.T) {
	if !bytes.HasSuffix(RobotsTxt, []byte("\n")) {
		t.Errorf("RobotsTxt does not end with a newline")
	}
	for _, tt := range []struct {
		path string
		want bool
	}{
		{"/movies/", true},
		{"/movies/?x=1", true},
		{"/api/v1/movies", false},
		{"/metrics", false},
		{"/healthz", false},
		{"/readyz", false},
		{"/", false},
	} {
		if got := robotsAllowed(t, RobotsTxt, tt.path); got != tt.want {
			t.Errorf("robots.txt allows %s = %v, want %v", tt.path, got, tt.want)
		}
	}
}
