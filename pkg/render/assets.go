package render

import (
	"bytes"
	"encoding/binary"
	"image"
	"image/color"
	"image/png"
	"math"
)

// The two files every visitor's tools ask for besides the page. Answered
// with these instead of a 404, they cost a few hundred bytes once per
// client a day (they never change while the server runs) and keep 404s in
// the logs and metrics for real mistakes.
const (
	// RobotsTxtContentType is the Content-Type to serve RobotsTxt with.
	RobotsTxtContentType = "text/plain; charset=utf-8"
	// FaviconContentType is the Content-Type to serve Favicon with.
	FaviconContentType = "image/x-icon"
	// AssetCacheControl is the Cache-Control for RobotsTxt and Favicon:
	// they are constant, so a day's caching anywhere is safe.
	AssetCacheControl = "public, max-age=86400"
)

// RobotsTxt is the body of /robots.txt. It invites crawlers to the film
// list only: the JSON API, the metrics and the health checks are not
// pages for search results. Under RFC 9309 the longest matching rule
// wins, so Allow: /movies/ beats Disallow: /. Callers must not modify it.
var RobotsTxt = []byte(`User-agent: *
Allow: /movies/
Disallow: /
`)

// Favicon is the body of /favicon.ico: a 32×32 soot sprite (a black ball
// with two white eyes) as an ICO file holding one PNG, which every
// current browser reads. It is drawn here rather than shipped as a binary
// file so that a review can see what it is. Callers must not modify it.
var Favicon = mustICO(drawFavicon())

// faviconSize is the icon's width and height in pixels: the size browsers
// ask for on high-density tab strips, scaled down cleanly to 16.
const faviconSize = 32

// drawFavicon draws the icon with 4×4 supersampling, so the round edges
// are smooth against any tab colour.
func drawFavicon() *image.NRGBA {
	type disc struct {
		x, y, r float64
		c       color.NRGBA
	}
	black, white := color.NRGBA{0x1b, 0x1b, 0x1b, 0xff}, color.NRGBA{0xff, 0xff, 0xff, 0xff}
	// Later discs paint over earlier ones.
	discs := []disc{
		{16, 16, 14.5, black},                      // body
		{10.5, 14, 4, white}, {21.5, 14, 4, white}, // eyes
		{11, 15, 2, black}, {21, 15, 2, black}, // pupils, looking at each other
	}
	const ss = 4
	img := image.NewNRGBA(image.Rect(0, 0, faviconSize, faviconSize))
	for py := range faviconSize {
		for px := range faviconSize {
			var r, g, b, a float64
			for sy := range ss {
				for sx := range ss {
					x, y := float64(px)+(float64(sx)+0.5)/ss, float64(py)+(float64(sy)+0.5)/ss
					var c color.NRGBA
					for _, d := range discs {
						if math.Hypot(x-d.x, y-d.y) <= d.r {
							c = d.c
						}
					}
					// Average premultiplied, so transparent samples add no colour.
					fa := float64(c.A) / 255
					r, g, b, a = r+float64(c.R)*fa, g+float64(c.G)*fa, b+float64(c.B)*fa, a+fa
				}
			}
			if a == 0 {
				continue
			}
			img.SetNRGBA(px, py, color.NRGBA{
				R: uint8(math.Round(r / a)), G: uint8(math.Round(g / a)), B: uint8(math.Round(b / a)),
				A: uint8(math.Round(a / (ss * ss) * 255)),
			})
		}
	}
	return img
}

// mustICO wraps img, encoded as PNG, in an ICO container: a 6-byte
// header, one 16-byte directory entry, then the PNG. ICO is what a
// request for /favicon.ico expects; a PNG inside it is allowed since
// Windows Vista and read by every current browser.
func mustICO(img image.Image) []byte {
	var p bytes.Buffer
	enc := png.Encoder{CompressionLevel: png.BestCompression}
	if err := enc.Encode(&p, img); err != nil {
		panic("render: favicon: " + err.Error())
	}
	b := img.Bounds()
	var ico bytes.Buffer
	le := binary.LittleEndian
	ico.Write(le.AppendUint16(nil, 0))                  // reserved
	ico.Write(le.AppendUint16(nil, 1))                  // type: icon
	ico.Write(le.AppendUint16(nil, 1))                  // one image
	ico.Write([]byte{byte(b.Dx()), byte(b.Dy()), 0, 0}) // width, height, no palette, reserved
	ico.Write(le.AppendUint16(nil, 1))                  // colour planes
	ico.Write(le.AppendUint16(nil, 32))                 // bits per pixel
	ico.Write(le.AppendUint32(nil, uint32(p.Len())))    // image size
	ico.Write(le.AppendUint32(nil, uint32(6+16)))       // image offset
	ico.Write(p.Bytes())
	return ico.Bytes()
}
