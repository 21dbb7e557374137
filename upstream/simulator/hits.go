package simulator

import (
	"math"
	"strconv"
	"time"
)

// generator makes hit number k of a stream, always the same bytes for the
// same (seed, k), so tests can compare what lsmux delivered with what the
// simulator sent. Hits are modelled on Adobe's Live Stream sample: about
// 1–2 KB, ids over the full unsigned 64-bit range, a skewed spread of
// visitors, pages, countries, browsers and events.
type generator struct {
	seed     uint64
	suite    string
	start    time.Time
	rate     float64
	visitors uint64
}

// splitmix64 is a tiny, good-enough mixing function: each field of a hit
// draws from mix(seed, k, field).
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (g *generator) rnd(k, field uint64) uint64 {
	return splitmix64(g.seed ^ splitmix64(k*64+field))
}

// unit returns a float in [0,1).
func (g *generator) unit(k, field uint64) float64 {
	return float64(g.rnd(k, field)>>11) / (1 << 53)
}

// skewed picks an index in [0,n) with a heavy head: a few values are very
// common, most are rare, as pages and countries are on a real site.
func (g *generator) skewed(k, field uint64, n int) int {
	u := g.unit(k, field)
	return int(math.Pow(u, 2.5) * float64(n))
}

// visitor returns the visitor of hit k. Partitioning across connections is
// by visitor, as Live Stream does it.
func (g *generator) visitor(k uint64) uint64 {
	return uint64(g.skewed(k, 1, int(g.visitors)))
}

// hitTime is when hit k happened: the simulator emits hits at a steady rate.
func (g *generator) hitTime(k uint64) time.Time {
	return g.start.Add(time.Duration(float64(k) / g.rate * float64(time.Second)))
}

var (
	pages = []string{"home", "search results", "product detail", "category: shoes", "cart", "checkout: shipping",
		"checkout: payment", "checkout: confirmation", "account: login", "account: orders", "category: jackets",
		"help: returns", "blog: winter guide", "store locator", "category: accessories", "newsletter signup"}
	countries = []struct{ code, region, city, lang string }{
		{"usa", "ca", "san jose", "en-US"}, {"usa", "ny", "new york", "en-US"}, {"gbr", "eng", "london", "en-GB"},
		{"deu", "be", "berlin", "de-DE"}, {"fra", "idf", "paris", "fr-FR"}, {"jpn", "13", "tokyo", "ja-JP"},
		{"can", "on", "toronto", "en-CA"}, {"bra", "sp", "sao paulo", "pt-BR"}, {"ind", "ka", "bengaluru", "en-IN"},
		{"aus", "nsw", "sydney", "en-AU"}, {"fra", "ara", "lyon", "fr-FR"}, {"esp", "md", "madrid", "es-ES"},
		{"ita", "lo", "milan", "it-IT"}, {"nld", "nh", "amsterdam", "nl-NL"}, {"mex", "cmx", "mexico city", "es-MX"},
	}
	browsers = []struct{ name, version, os, ua string }{
		{"Google Chrome", "131", "Windows 10", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"},
		{"Safari", "18", "iOS 18", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"},
		{"Google Chrome", "131", "Android 14", "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36"},
		{"Microsoft Edge", "131", "Windows 11", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0"},
		{"Mozilla Firefox", "133", "Linux", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"},
		{"Safari", "18", "macOS 15", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15"},
	}
	referrers = []string{"", "https://www.google.com/", "https://www.bing.com/", "https://news.example.org/article/42",
		"https://www.facebook.com/", "https://t.co/abc", "https://duckduckgo.com/"}
	products = []struct{ sku, category string }{{"SKU-1001", "shoes"}, {"SKU-2044", "jackets"}, {"SKU-3310", "accessories"},
		{"SKU-1207", "shoes"}, {"SKU-4120", "bags"}, {"SKU-5099", "jackets"}}
	campaigns = []string{"", "", "", "em:winter-sale", "sem:brand", "soc:launch", "aff:partner-17"}
)

// hit appends the JSON of hit k to b.
func (g *generator) hit(b []byte, k uint64) []byte {
	v := g.visitor(k)
	page := pages[g.skewed(k, 2, len(pages))]
	geo := countries[g.skewed(k, 3, len(countries))]
	br := browsers[(v*7+v/3)%uint64(len(browsers))]
	ts := g.hitTime(k).Unix()

	b = append(b, `{"reportSuite":`...)
	b = strconv.AppendQuote(b, g.suite)
	b = append(b, `,"timeGMT":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"receivedTimeGMT":`...)
	b = strconv.AppendInt(b, ts+int64(g.rnd(k, 4)%3), 10)
	b = append(b, `,"hitIdHigh":`...)
	b = strconv.AppendUint(b, g.rnd(k, 5), 10)
	b = append(b, `,"hitIdLow":`...)
	b = strconv.AppendUint(b, g.rnd(k, 6), 10)
	b = append(b, `,"mcVisIdHigh":`...)
	b = strconv.AppendUint(b, splitmix64(g.seed^v^0x51), 10)
	b = append(b, `,"mcVisIdLow":`...)
	b = strconv.AppendUint(b, splitmix64(g.seed^v^0x52), 10)
	b = append(b, `,"visIdHigh":`...)
	b = strconv.AppendUint(b, splitmix64(v^0x61)>>1, 10)
	b = append(b, `,"visIdLow":`...)
	b = strconv.AppendUint(b, splitmix64(v^0x62)>>1, 10)
	b = append(b, `,"visIdType":5,"customerPerspective":0,"isErrorPage":false,"isFirstHit":`...)
	b = strconv.AppendBool(b, g.rnd(k, 7)%10 == 0)
	b = append(b, `,"hitSource":1,"pageName":`...)
	b = strconv.AppendQuote(b, page)
	b = append(b, `,"pageURL":`...)
	b = strconv.AppendQuote(b, "https://www.example-store.com/"+slug(page)+"?cid="+strconv.FormatUint(g.rnd(k, 8)%100000, 10))
	b = append(b, `,"siteSection":`...)
	b = strconv.AppendQuote(b, section(page))
	b = append(b, `,"referrer":`...)
	b = strconv.AppendQuote(b, referrers[g.skewed(k, 9, len(referrers))])
	b = append(b, `,"geoCountry":`...)
	b = strconv.AppendQuote(b, geo.code)
	b = append(b, `,"geoRegion":`...)
	b = strconv.AppendQuote(b, geo.region)
	b = append(b, `,"geoCity":`...)
	b = strconv.AppendQuote(b, geo.city)
	b = append(b, `,"geoDMA":`...)
	b = strconv.AppendUint(b, 500+g.rnd(k, 10)%400, 10)
	b = append(b, `,"language":`...)
	b = strconv.AppendQuote(b, geo.lang)
	b = append(b, `,"ip":"198.51.`...)
	b = strconv.AppendUint(b, v%256, 10)
	b = append(b, '.')
	b = strconv.AppendUint(b, (v/256)%256, 10)
	b = append(b, `","browser":`...)
	b = strconv.AppendQuote(b, br.name)
	b = append(b, `,"browserVersion":`...)
	b = strconv.AppendQuote(b, br.version)
	b = append(b, `,"os":`...)
	b = strconv.AppendQuote(b, br.os)
	b = append(b, `,"userAgent":`...)
	b = strconv.AppendQuote(b, br.ua)
	b = append(b, `,"screenResolution":"1920x1080","colorDepth":"24","javaScriptVersion":"1.8","connectionType":"LAN/Wifi","currency":"USD"`...)
	b = append(b, `,"events":{`...)
	b = g.events(b, k, page)
	b = append(b, `},"evars":{"evars":{"eVar1":`...)
	b = strconv.AppendQuote(b, campaigns[g.skewed(k, 11, len(campaigns))])
	b = append(b, `,"eVar2":`...)
	b = strconv.AppendQuote(b, "member-tier-"+strconv.FormatUint(v%4, 10))
	b = append(b, `,"eVar5":`...)
	b = strconv.AppendQuote(b, page)
	b = append(b, `,"eVar12":`...)
	b = strconv.AppendQuote(b, "ab-test:"+[]string{"control", "variant-a", "variant-b"}[v%3])
	b = append(b, `}},"props":{"prop1":`...)
	b = strconv.AppendQuote(b, section(page))
	b = append(b, `,"prop3":`...)
	b = strconv.AppendQuote(b, geo.lang)
	b = append(b, `,"prop7":`...)
	b = strconv.AppendQuote(b, "logged-"+[]string{"in", "out"}[v%2])
	b = append(b, `},"products":[`...)
	if page == "product detail" || page == "cart" || page[:min(len(page), 8)] == "checkout" {
		p := products[g.rnd(k, 12)%uint64(len(products))]
		b = append(b, `{"category":`...)
		b = strconv.AppendQuote(b, p.category)
		b = append(b, `,"name":`...)
		b = strconv.AppendQuote(b, p.sku)
		b = append(b, `,"quantity":`...)
		b = strconv.AppendUint(b, 1+g.rnd(k, 13)%3, 10)
		b = append(b, `,"price":`...)
		b = strconv.AppendFloat(b, float64(1999+g.rnd(k, 14)%20000)/100, 'f', 2, 64)
		b = append(b, '}')
	}
	b = append(b, `],"contextData":{"a.AppID":"store 4.2.0","a.DeviceName":`...)
	b = strconv.AppendQuote(b, br.os)
	b = append(b, `,"sessionSeq":`...)
	b = strconv.AppendUint(b, k%97, 10)
	b = append(b, `}}`...)
	return b
}

func (g *generator) events(b []byte, k uint64, page string) []byte {
	b = append(b, `"pageView":{"value":1}`...)
	add := func(name string) {
		b = append(b, `,"`...)
		b = append(b, name...)
		b = append(b, `":{"value":1}`...)
	}
	switch page {
	case "product detail":
		add("prodView")
	case "cart":
		add("scAdd")
	case "checkout: shipping", "checkout: payment":
		add("scCheckout")
	case "checkout: confirmation":
		add("purchase")
	case "newsletter signup":
		add("event1")
	}
	if g.rnd(k, 15)%20 == 0 {
		add("event12")
	}
	return b
}

func slug(page string) string {
	out := make([]byte, 0, len(page))
	for i := 0; i < len(page); i++ {
		switch c := page[i]; {
		case c >= 'a' && c <= 'z':
			out = append(out, c)
		case c == ' ' && len(out) > 0 && out[len(out)-1] != '/':
			out = append(out, '-')
		case c == ':':
			out = append(out, '/')
		}
	}
	return string(out)
}

func section(page string) string {
	for i := 0; i < len(page); i++ {
		if page[i] == ':' {
			return page[:i]
		}
	}
	return page
}
