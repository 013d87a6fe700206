package units

import "testing"

func TestParseSizeAndRate(t *testing.T) {
	sizes := map[string]int64{"512MiB": 512 << 20, "20GB": 20e9, "4096": 4096, "1.5KiB": 1536, "256 KiB": 256 << 10, "0": 0, "7B": 7}
	for in, want := range sizes {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1MiB", "12XB", "MiB", "1e30GiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	rates := map[string]float64{"100MiB/s": 100 << 20, "50MB/s": 50e6, "1000": 1000, "2KiB": 2048}
	for in, want := range rates {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseRate("fast"); err == nil {
		t.Error("ParseRate(fast) accepted")
	}
}
