"""Deterministic test corpus for the DeepSeek tokenizer goldens.

`build_corpus()` returns the list of strings written to tests/data/tokenizer/corpus.jsonl by
make_tokenizer_golden.py; make_bench_corpus.py reuses the same pools. Pure Python (no third-party
imports). Everything is derived from hand-written seeds plus a seeded `random.Random`, so the output
is byte-for-byte the same on every run and Python >= 3.10 (only `random.random`, `randrange`,
`choice` and `shuffle` are used, whose sequences Python keeps stable). Never iterate over sets here:
string hashing is randomized per process.
"""

from __future__ import annotations

import random

SEED = 20240315

# --------------------------------------------------------------------------------------------------
# Hand-written seeds
# --------------------------------------------------------------------------------------------------

PROSE = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "It was the best of times, it was the worst of times; it was the age of wisdom, it was the age of foolishness.",
        "In 1969, Apollo 11 landed on the Moon, and Neil Armstrong said: \"That's one small step for [a] man.\"",
        "Don't you think it's strange that we've never met? I'd've guessed otherwise.",
        "She sells sea-shells by the sea-shore (allegedly).",
        "The meeting starts at 9:30 a.m. \u2014 please don't be late!",
        "Mr. O'Neil's well-known e-mail address isn't public, is it?",
        "Tokenizers split text into pieces; byte-level BPE never fails on unknown characters.",
        "I'll be there in 5 min... maybe 10?",
        "Rock 'n' roll, na\u00efve caf\u00e9 owners, and the co\u00f6perative's r\u00e9sum\u00e9.",
        "We hold these truths to be self-evident, that all men are created equal.",
        "ALL CAPS SENTENCES ARE SOMETIMES USED FOR EMPHASIS.",
        "camelCaseIdentifiers and snake_case_names and kebab-case-words appear in prose too.",
        "Hello,world!No spaces after punctuation;weird,right?",
        "Temperatures ranged from -40\u00b0C to +45\u00b0C (i.e. \u221240 \u00b0F to 113 \u00b0F).",
        "\u201cSmart quotes\u201d and \u2018single ones\u2019 differ from \"straight\" and 'plain' quotes.",
        "The model has 671B parameters, of which 37B are activated for each token.",
        "Wait\u2014what? No\u2026 that can't be right!!!",
        "You're gonna need a bigger boat.",
        "Section 3.2.1 (see Fig. 4b) describes the multi-head latent attention.",
        "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014I thought I would sail about a little.",
        "To be, or not to be, that is the question.",
        "The price is $1,299.99 (excl. VAT), or \u20ac1.199,00 in Germany.",
        "#hashtags, @mentions and ~tildes~ are common online.",
    ],
    "zh_hans": [
        "今天天气很好，我们一起去公园散步吧。",
        "深度学习模型需要大量的数据和计算资源。",
        "人工智能正在改变我们的生活方式和工作方式。",
        "他说：“这个问题很难，但是我们一定能解决。”",
        "北京是中华人民共和国的首都，也是一座历史悠久的城市。",
        "请在2024年3月15日之前提交报告。",
        "这家餐厅的饺子非常好吃，价格也很便宜。",
        "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？",
        "我们使用字节级别的BPE分词器来处理中文文本。",
        "大语言模型的推理速度取决于内存带宽。",
        "混合专家模型只激活一部分参数，从而降低计算成本。",
        "《红楼梦》是中国古典四大名著之一。",
    ],
    "zh_hant": [
        "臺灣的夜市文化非常有名，吸引了許多觀光客。",
        "這個軟體的繁體中文介面已經完成翻譯。",
        "香港是一個國際化的大都會，擁有獨特的飲食文化。",
        "學習語言需要耐心與長時間的練習。",
        "龜兔賽跑的故事告訴我們：驕傲使人落後。",
        "電腦網路與資訊安全是現代社會的重要議題。",
        "鬱鬱蔥蔥的森林裡，藏著許多神祕的動物。",
        "請問您需要幫忙嗎？",
        "憂鬱的臺北雨季，讓人想起遠方的故鄉。",
    ],
    "ja": [
        "今日はいい天気ですね。散歩に行きましょう。",
        "東京タワーは日本の有名な観光地です。",
        "私はコーヒーよりお茶のほうが好きです。",
        "ひらがなとカタカナと漢字を混ぜて書きます。",
        "コンピューターのメモリが足りません。",
        "吾輩は猫である。名前はまだ無い。",
        "ｶﾀｶﾅの半角文字もあります。ﾃｽﾄﾃﾞｽ",
        "すみません、駅はどこですか？",
        "日本語の文章には、句読点「、」と「。」が使われます。",
        "ラーメン、寿司、天ぷら、どれも美味しい！",
        "ヴァイオリンとヴィオラの違いを説明してください。",
        "令和6年（2024年）の売上は前年比＋12％でした。",
    ],
    "ko": [
        "안녕하세요, 만나서 반갑습니다.",
        "오늘은 날씨가 정말 좋네요.",
        "한국어는 한글이라는 고유한 문자를 사용합니다.",
        "서울은 대한민국의 수도입니다.",
        "이 프로그램은 인공지능을 이용해 텍스트를 분석합니다.",
        "감사합니다! 내일 또 봐요~",
        "저는 커피를 좋아하지만 차도 자주 마셔요.",
        "대규모 언어 모델의 토크나이저를 테스트하고 있습니다.",
    ],
    "ar": [
        "مرحبا بالعالم",
        "اللغة العربية جميلة جداً.",
        "ذهبتُ إلى المكتبة لأقرأ كتاباً عن التاريخ.",
        "السلام عليكم ورحمة الله وبركاته.",
        "يبلغ عدد سكان المدينة ١٢٣٤٥٦ نسمة.",
        "هل تتحدث اللغة الإنجليزية؟",
        "الذكاء الاصطناعي يغيّر العالم.",
        "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
        "سلام دنیا، حالت چطوره؟ ۱۲۳۴۵",
    ],
    "hi": [
        "नमस्ते, आप कैसे हैं?",
        "भारत एक विशाल और विविधतापूर्ण देश है।",
        "मुझे हिंदी में किताबें पढ़ना पसंद है।",
        "कृत्रिम बुद्धिमत्ता का भविष्य उज्ज्वल है।",
        "क़िला, ज़रूर, फ़िल्म और ग़ज़ल में नुक़्ता है।",
        "संस्कृत भाषा बहुत प्राचीन है।",
        "आज का तापमान ३५ डिग्री सेल्सियस है।",
        "श्री गणेशाय नमः ॥",
        "क्षत्रिय, ज्ञान, श्रद्धा, द्वार — संयुक्ताक्षर।",
    ],
    "th": [
        "สวัสดีครับ ยินดีที่ได้รู้จัก",
        "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
        "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
        "ฉันชอบกินข้าวผัดกะเพรา",
        "วันนี้อากาศร้อนมาก ๓๕ องศา",
        "ขอบคุณมากค่ะ",
        "น้ำใจไมตรีเป็นสิ่งที่ดีงาม",
    ],
    "ru": [
        "Привет, мир!",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Москва — столица Российской Федерации.",
        "Я люблю читать книги по вечерам.",
        "В 2023 году было продано 1 234 567 экземпляров.",
        "Ёжик в тумане — известный мультфильм.",
        "Машинное обучение и нейронные сети.",
        "ВСЕ ЗАГЛАВНЫЕ БУКВЫ И цифры 123.",
        "Україна, Беларусь, Србија, България — кириллица.",
    ],
    "el": [
        "Γειά σου Κόσμε!",
        "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
        "Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
        "Τι κάνεις\u037e Καλά, ευχαριστώ.",
        "ἐν ἀρχῇ ἦν ὁ λόγος, καὶ ὁ λόγος ἦν πρὸς τὸν θεόν",
    ],
    "misc": [
        "שלום עולם! עברית נכתבת מימין לשמאל.",
        "Tiếng Việt có nhiều dấu thanh: à, á, ả, ã, ạ.",
        "İstanbul'da ılık bir gün; ŞĞÜÖÇ ve şğüöç.",
        "Größenordnung, Straße, übermäßig, Äpfel und Öl.",
        "Où est la bibliothèque ? « Ça va » — très bien, merci.",
        "¿Dónde está el baño? ¡Olé! El niño comió piñata.",
        "Zażółć gęślą jaźń.",
        "আমি বাংলায় গান গাই।",
        "தமிழ் ஒரு பழமையான மொழி.",
        "გამარჯობა, როგორ ხარ?",
        "Բարեւ աշխարհ",
        "ሰላም ልዑል",
        "བོད་ཡིག་ནི་སྐད་ཡིག་ཞིག་རེད།",
        "សួស្តីពិភពលោក",
        "မင်္ဂလာပါ",
        "ආයුබෝවන්",
        "Ẹ kú àárọ̀, ṣé àlàáfíà ni?",
        "ᐊᐃᓐᓇᐃ ᓄᓇᕗᑦ",
        "Ꭳ ᏏᏲ",
    ],
}

CODE = [
    # Python
    'def fib(n: int) -> int:\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n'
    '        a, b = b, a + b\n    return a\n\n\nif __name__ == "__main__":\n    print(f"{fib(50):,}")\n',
    "class Node:\n    def __init__(self, val, nxt=None):\n        self.val = val\n        self.next = nxt\n\n"
    "    def __repr__(self):\n        return f'Node({self.val!r})'\n",
    "import numpy as np\nx = np.arange(10, dtype=np.float32)\ny = x ** 2 + 3 * x - 1\nprint(y.mean(), y.std())  # stats\n",
    "    # deeply\n        # nested\n            # comment\n                return {'a': [1, 2, 3], \"b\": (4, 5)}\n",
    "lambda x: x if x > 0 else -x\n",
    "with open('data.json', encoding='utf-8') as f:\n\tdata = json.load(f)\n\tfor k, v in data.items():\n\t\tprint(k, '=>', v)\n",
    # C++
    "#include <iostream>\n#include <vector>\n\ntemplate <typename T>\nT sum(const std::vector<T>& v) {\n    T s{};\n"
    "    for (const auto& x : v) s += x;\n    return s;\n}\n\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n"
    '\tstd::cout << sum(v) << "\\n";\n\treturn 0;\n}\n',
    "auto it = std::find_if(begin(xs), end(xs), [&](const auto& p) { return p->id == 0x7fff'ffffULL; });\n",
    "struct alignas(64) Slot { std::atomic<uint64_t> seq; char pad[56]; };\nstatic_assert(sizeof(Slot) == 64);\n",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))\n#ifdef __cplusplus\nextern \"C\" {\n#endif\nint f(void);\n",
    # JavaScript / TypeScript
    "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);\n",
    "async function fetchJson(url) {\n  const res = await fetch(url, { headers: { 'Accept': 'application/json' } });\n"
    "  if (!res.ok) throw new Error(`HTTP ${res.status}`);\n  return res.json();\n}\n",
    "export interface User {\n  id: number;\n  name?: string | null;\n}\nlet u: User = { id: 1 } as const;\n",
    "document.querySelectorAll('div.item > span').forEach(el => el.classList.toggle('active'));\n",
    # Rust
    "fn main() {\n    let v: Vec<u32> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Iter<'a, T> {\n    type Item = &'a T;\n"
    "    fn next(&mut self) -> Option<Self::Item> { self.inner.next() }\n}\n",
    "#[derive(Debug, Clone, PartialEq)]\npub enum Token { Num(i64), Op(char), LParen, RParen }\n",
    "match x {\n    Some(ref y) if *y > 0 => y.to_string(),\n    _ => String::new(),\n}\n",
    # SQL
    "SELECT u.id, COUNT(*) AS n\nFROM users u\nJOIN orders o ON o.user_id = u.id\n"
    "WHERE o.created_at >= '2024-01-01'\nGROUP BY u.id\nHAVING COUNT(*) > 5\nORDER BY n DESC\nLIMIT 10;\n",
    "CREATE TABLE t (id SERIAL PRIMARY KEY, name VARCHAR(255) NOT NULL DEFAULT '', price NUMERIC(10,2));\n",
    "INSERT INTO logs(msg) VALUES ('it''s done'), ('ok');  -- escaped quote\n",
    # shell
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l \"$f\"\ndone | sort -n | tail -5\n",
    "find . -name '*.py' -print0 | xargs -0 grep -n 'TODO' 2>/dev/null || true\n",
    "export PATH=\"$HOME/.local/bin:$PATH\" && echo ${PATH//:/$'\\n'}\n",
    "cat <<'EOF' > /tmp/x.conf\n[server]\nport = 8080\nEOF\n",
    # Go, HTML, JSON, YAML, Markdown, LaTeX, CSS, Makefile, diff, asm
    "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n\tfmt.Println(<-ch)\n}\n",
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test &amp; demo</title></head>\n"
    "<body>\n  <p class=\"x\">Hello&nbsp;world &lt;3</p>\n</body>\n</html>\n",
    '{\n  "name": "whale",\n  "version": "0.1.0",\n  "deps": {"a": "^1.2.3", "b": null},\n  "ok": true,\n  "pi": 3.14159\n}\n',
    "server:\n  host: 0.0.0.0\n  ports:\n    - 80\n    - 443\n  tls: {enabled: true, cert: \"/etc/ssl/c.pem\"}\n",
    "| Model | Params | Active |\n|-------|-------:|-------:|\n| V3    | 671B   | 37B    |\n\n> **Note:** `code` and *emphasis*.\n",
    "\\begin{equation}\n  \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}\n",
    ".btn:hover { color: #ff00aa; margin: 0 auto; transition: all .3s ease-in-out; }\n",
    "all: main.o util.o\n\t$(CC) -o $@ $^ $(LDFLAGS)\n\n%.o: %.c\n\t$(CC) -c $< -o $@\n",
    "--- a/src/main.cpp\n+++ b/src/main.cpp\n@@ -1,3 +1,4 @@\n #include <cstdio>\n+#include <cstdlib>\n int main() {\n-  return 0;\n+  return EXIT_SUCCESS;\n",
    "    mov rax, qword ptr [rbp - 8]\n    vfmadd231ps zmm0, zmm1, zmm2\n    ret\n",
    "r'^(?P<user>[\\w.+-]+)@(?P<host>[\\w-]+\\.[\\w.]+)$'\n",
]

WORDS_EN = (
    "the of and to in is was for on that with as by at from it an be this are or his which has had not "
    "but were they their been have one all we can more will would there about model token data time "
    "system language attention expert layer memory cache kernel tensor vector matrix weight value"
).split()

TLDS = ["com", "org", "net", "io", "ai", "co.uk", "de", "cn", "jp", "xn--fiqs8s"]

# Added tokens of the DeepSeek V3/V4 vocabularies plus near misses. The exact strings matter.
SPECIAL = [
    "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>",
    "<｜User｜>", "<｜Assistant｜>", "<|EOT|>",
    "<｜fim▁hole｜>", "<｜fim▁begin｜>", "<｜fim▁end｜>",
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>", "<｜place▁holder▁no▁0｜>", "<｜place▁holder▁no▁797｜>", "<｜place▁holder▁no▁799｜>",
    # V4 additions (plain text for V3)
    "<think>", "</think>", "｜DSML｜", "<dsml:", "</dsml:", "<｜latest_reminder｜>",
    "<｜begin▁of▁file▁name｜>", "<｜end▁of▁file▁name｜>", "<｜begin▁of▁repo▁name｜>",
    "<｜begin▁sys｜>", "<｜end▁sys｜>", "<｜search▁begin｜>", "<｜end_of_query｜>",
    "<｜image｜>", "<｜/table>｜", "<｜table｜>", "<｜/td｜>", "<｜ref｜>", "<｜/ref｜>", "<｜rl_image_pad｜>",
]

LOOKALIKES = [
    "<|User|>", "<|Assistant|>", "<|begin_of_sentence|>", "<|end_of_sentence|>", "<｜end_of_sentence｜>",
    "<｜end▁of▁sentence|>", "<|end▁of▁sentence｜>", "< ｜User｜>", "<｜User｜ >", "<｜user｜>", "<｜USER｜>",
    "<｜User", "｜User｜>", "User｜>", "<｜Assistant", "<｜Assistant｜", "<think", "think>", "</think",
    "<think >", "<THINK>", "< /think>", "<｜EOT｜>", "<|EOT|", "|EOT|>", "<|eot|>", "<｜fim▁hole",
    "<｜fim hole｜>", "<｜fim_hole｜>", "<｜place▁holder▁no▁800｜>", "<｜place▁holder▁no▁-1｜>",
    "<｜begin▁of▁sentence", "▁of▁sentence｜>", "<｜tool▁sep", "<｜DSML", "DSML｜", "<dsml", "dsml:",
    "<｜table>｜", "<｜/table｜>", "<｜latest_reminder", "<s>", "</s>", "<|endoftext|>", "<|im_start|>",
    "[INST]", "<unk>", "<pad>",
]

EMOJI = [
    "😀", "😂", "🥲", "🤖", "🐳", "🚀", "🔥", "✅", "❌", "⭐", "❤️", "❤︎", "☺️", "✌️",
    "👍🏻", "👍🏼", "👍🏽", "👍🏾", "👍🏿", "🧑🏾‍🚀", "👩🏽‍💻", "👨‍👩‍👧‍👦", "👩‍❤️‍💋‍👨", "🏳️‍🌈", "🏳️‍⚧️",
    "🇺🇸", "🇯🇵", "🇩🇪", "🇨🇳", "🇰🇷", "🇮🇳", "🇧🇷", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🏴󠁧󠁢󠁷󠁬󠁳󠁿", "1️⃣", "#️⃣", "*️⃣",
    "🫠", "🫶🏻", "🧙‍♂️", "🏃‍♀️‍➡️", "🐈‍⬛", "😶‍🌫️", "🤌", "🦀", "🐍", "☕", "©", "®", "™", "♻️",
]

WS = [" ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2009", "\u202f", "\u200b", "\f",
      "\v", "\u0085", "\u2028", "\u2029", "\u1680", "\u2002", "\u2003", "\u205f", "\ufeff", " \n", "\t\n"]

UNICODE_ODD = [
    "e\u0301 vs \u00e9 (NFD vs NFC)", "A\u030a\u0301 \u212b \u00c5", "Z\u0351\u0357\u0312\u0346a\u0310\u0352l\u0354g\u0349o\u0353\u034e",
    "x\u0300\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308\u0309\u030a\u030b\u030c",
    "\u0301 leading combining mark", "zero\u200bwidth\u200bspace", "zw\u200cnj and zw\u200dj",
    "word\u2060joiner", "soft\u00adhyphen", "\u200f\u05e9\u05dc\u05d5\u05dd\u200e abc", "\u202eevil override\u202c",
    "\u2066isolate\u2069 \u2067rtl\u2069 \u2068fsi\u2069", "\ufeffBOM at start", "replacement \ufffd char \ufffd\ufffd",
    "private use \ue000\ue001\uf8ff", "plane 15 PUA \U000f0000 \U0010fffd", "unassigned \u0378\u0379 \u05ff \u2fe0 \ud7fc",
    "unassigned planes \U0003fffd \U00050000 \U000e01f0", "noncharacters \ufdd0 \ufffe \uffff \U0010ffff \U0001fffe",
    "CJK ext B 𠀀𠀁𠀂 𪚥 𩸽 𠮷野家", "CJK beyond U+9FA5: 龦龧鿿 \u9fa5\u9fa6 ext A 㐀㐁䶵 compat 豈更",
    "Hangul jamo \u1100\u1161\u11a8 vs 각", "fullwidth ＡＢＣ ａｂｃ ０１２ ！？", "math 𝐀𝐁𝐂 𝑥𝑦𝑧 𝔸𝔹ℂ 𝟘𝟙𝟚",
    "musical 𝄞 𝄢 and hieroglyph 𓀀 𓂀", "ligatures ﬁ ﬂ ﬀ ß ẞ", "Kelvin \u212a ohm \u2126 micro \u00b5 \u03bc",
    "control \x00 nul \x01\x02\x07 bell \x1b[31mred\x1b[0m \x7f del", "C1 \x80\x81\x9f controls",
    "variation selectors 葛\U000e0100 ⛄\ufe0e ⛄\ufe0f", "tags \U000e0041\U000e0042",
    "Unicode 15/16 letters: \U0001e030 \U00011f04 \U00031350 \u1c89 \U00010d50 \ua7cb",
    "Unicode 15/16 digits: \U0001e4f0\U0001e4f1 \U00011bf0\U00011bf1 \U0001ccf0",
    "combining on CJK 中\u0301 and on digit 1\u20e3 and on space \u0308",
    "Devanagari virama \u0915\u094d\u200d\u0937 nukta \u0915\u093c", "Thai tone marks \u0e01\u0e48\u0e49\u0e4a\u0e4b",
    "Arabic tatweel \u0640\u0640\u0640 and \u0627\u0644\u0644\u0647 \ufdf2", "\u0600\u0601 Arabic number sign",
    "Tamil \u0b95\u0bcd\u0bb7 Bengali \u0995\u09cd\u09b7",
]

NUMBERS_FIXED = [
    "0", "00", "000", "0000", "1234567890", "12345678901234567890123456789012345678901234567890",
    "3.141592653589793238462643383279", "-0.0001", "+1e-10", "6.022e23", "1,234,567,890", "1.234.567,89",
    "1 234 567", "1\u00a0234\u00a0567", "1\u202f234\u202f567", "1'234'567", "12,34,56,789 (Indian grouping)",
    "0xDEADBEEF 0b1010_1010 0o755 1_000_000", "v1.2.3-rc.4+build.567", "192.168.0.1:8080", "::1 fe80::1%eth0",
    "１２３４５６７８９０", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "๐๑๒๓๔๕๖๗๘๙", "০১২৩৪৫৬৭৮৯",
    "x² + y³ = z⁴, 10⁻⁹, H₂O, CO₂", "½ ⅓ ¼ ⅞ ⅒", "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ ⅿ", "① ② ⑩ ⑳ ㊿", "𝟎𝟏𝟐 🄀 🄁", "1st 2nd 3rd 4th 21st",
    "$100 €200 £300 ¥400 ₹500 ₩600 ₿0.001", "50% 99.9% 100%", "3×4=12 10÷2=5 2^10=1024 √2≈1.414",
    "-273.15 °C", "1e308 * 10 = inf", "NaN", "∞", "1/2/3/4/5", "9999999999999999999999",
]

DATES_FIXED = [
    "2024-03-15", "2024-03-15T12:34:56Z", "2024-03-15T12:34:56.789+08:00", "15/03/2024", "03/15/2024",
    "15.03.2024", "March 15, 2024", "15 March 2024", "Fri, 15 Mar 2024 12:34:56 GMT", "2024年3月15日",
    "2024年3月15日 星期五 下午3点", "令和6年3月15日", "2024년 3월 15일", "12:34", "12:34:56.789", "11:59 PM",
    "Q1 2024", "FY2023/24", "1999-12-31 23:59:59", "00:00:00", "2038-01-19T03:14:07Z", "1712345678",
]

URLS_FIXED = [
    "https://www.example.com/path/to/page?query=1&lang=en#section-2",
    "http://localhost:8080/api/v1/users/42",
    "https://github.com/deepseek-ai/DeepSeek-V3/blob/main/README.md",
    "ftp://ftp.example.org/pub/file.tar.gz", "mailto:someone@example.com",
    "https://例え.jp/パス?名前=値", "https://xn--r8jz45g.jp/", "https://en.wikipedia.org/wiki/Byte_pair_encoding",
    "https://user:p%40ss@host.example:443/a%20b/c?d=e%26f", "www.example.co.uk", "file:///C:/Users/x/Desktop/a.txt",
    "john.doe+filter@example.com", "first_last@sub.domain.example.org", "用户@例子.广告", "\"quoted name\"@example.com",
    "C:\\Program Files\\App\\bin\\app.exe", "/usr/local/lib/python3.11/site-packages/",
]


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------

def _prose_lines(rng: random.Random, n: int) -> list[str]:
    langs = sorted(PROSE)
    out = []
    for _ in range(n):
        lang = rng.choice(langs)
        k = 1 + rng.randrange(4)
        sep = "" if lang in ("zh_hans", "zh_hant", "ja", "th") and rng.random() < 0.7 else " "
        out.append(sep.join(rng.choice(PROSE[lang]) for _ in range(k)))
    return out


def _mixed_lines(rng: random.Random, n: int) -> list[str]:
    pools = [sum((PROSE[k] for k in sorted(PROSE)), []), CODE, NUMBERS_FIXED, DATES_FIXED, URLS_FIXED, EMOJI,
             UNICODE_ODD]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(2 + rng.randrange(4)):
            p = rng.choice(rng.choice(pools))
            if len(p) > 80 and rng.random() < 0.5:
                a = rng.randrange(len(p))
                p = p[a:a + 1 + rng.randrange(60)]
            parts.append(p)
            parts.append(rng.choice(WS + ["", "", " ", " ", ", ", ": "]))
        out.append("".join(parts))
    return out


def _number(rng: random.Random) -> str:
    kind = rng.randrange(12)
    digits = "".join(str(rng.randrange(10)) for _ in range(1 + rng.randrange(30)))
    if kind == 0:
        return digits
    if kind == 1:
        return digits + "." + "".join(str(rng.randrange(10)) for _ in range(1 + rng.randrange(12)))
    if kind == 2:
        v = rng.randrange(10 ** (1 + rng.randrange(15)))
        return f"{v:,}"
    if kind == 3:
        v = rng.randrange(10 ** (1 + rng.randrange(12)))
        return f"{v:,}".replace(",", rng.choice([".", "\u00a0", "\u202f", " ", "'"]))
    if kind == 4:
        return f"{rng.random() * 10 ** rng.randrange(-8, 9):.{rng.randrange(1, 10)}e}"
    if kind == 5:
        return digits.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    if kind == 6:
        return digits.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    if kind == 7:
        return digits.translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    if kind == 8:
        return digits.translate(str.maketrans("0123456789", "०१२३४५६७८९"))
    if kind == 9:
        return rng.choice(["-", "+", "$", "€", "#", "№", "(", "x"]) + digits[:8] + rng.choice(["", "%", "km", "元", ")", "th"])
    if kind == 10:
        return hex(rng.randrange(1 << 64)) if rng.random() < 0.5 else f"{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
    return " ".join(str(rng.randrange(10 ** rng.randrange(1, 7))) for _ in range(2 + rng.randrange(8)))


def _date(rng: random.Random) -> str:
    y, m, d = 1900 + rng.randrange(200), 1 + rng.randrange(12), 1 + rng.randrange(28)
    hh, mm, ss = rng.randrange(24), rng.randrange(60), rng.randrange(60)
    fmts = [f"{y:04d}-{m:02d}-{d:02d}", f"{y:04d}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z", f"{d}/{m}/{y}",
            f"{m:02d}/{d:02d}/{y % 100:02d}", f"{d:02d}.{m:02d}.{y}", f"{y}年{m}月{d}日", f"{y}년 {m}월 {d}일",
            f"{hh}:{mm:02d}", f"{hh:02d}:{mm:02d}:{ss:02d}.{rng.randrange(1000):03d}", f"{y}{m:02d}{d:02d}"]
    return rng.choice(fmts)


def _url(rng: random.Random) -> str:
    w = lambda: rng.choice(WORDS_EN)  # noqa: E731
    kind = rng.randrange(4)
    if kind == 0:
        return f"https://{w()}.{rng.choice(TLDS)}/{w()}/{w()}-{rng.randrange(1000)}?{w()}={rng.randrange(99)}&x={w()}"
    if kind == 1:
        return f"{w()}.{w()}{rng.randrange(100)}@{w()}-{w()}.{rng.choice(TLDS)}"
    if kind == 2:
        return f"http://{rng.randrange(256)}.{rng.randrange(256)}.0.{rng.randrange(256)}:{rng.randrange(65536)}/{w()}"
    return f"See <https://{w()}.{rng.choice(TLDS)}/{w()}#{w()}> or email {w()}@{w()}.{rng.choice(TLDS)}."


def _ws_line(rng: random.Random) -> str:
    parts = []
    for _ in range(1 + rng.randrange(8)):
        parts.append(rng.choice(WS) * (1 + rng.randrange(5)))
        if rng.random() < 0.7:
            parts.append(rng.choice(WORDS_EN + ["中文", "日本語", "한국어", "42", "x", "(", "!", "é"]))
    return "".join(parts)


def _code_variant(rng: random.Random) -> str:
    c = rng.choice(CODE)
    r = rng.random()
    if r < 0.25:
        c = c.replace("    ", "\t")
    elif r < 0.5:
        c = c.replace("\n", "\r\n")
    elif r < 0.65:
        c = "\n".join(line.rstrip() + " " * rng.randrange(4) for line in c.split("\n"))
    elif r < 0.8:
        c = "\n".join(("  " * rng.randrange(1, 4)) + line for line in c.split("\n"))
    if rng.random() < 0.3:
        c = "```" + rng.choice(["python", "cpp", "js", "rust", "sql", "bash", ""]) + "\n" + c + "```"
    return c


def _special_line(rng: random.Random) -> str:
    ctx = [lambda: rng.choice(rng.choice([PROSE["en"], PROSE["zh_hans"], PROSE["ja"], PROSE["ko"]])),
           lambda: rng.choice(WORDS_EN), lambda: rng.choice(EMOJI), lambda: _number(rng), lambda: rng.choice(WS),
           lambda: ""]
    parts = []
    for _ in range(1 + rng.randrange(4)):
        if rng.random() < 0.6:
            parts.append(rng.choice(SPECIAL))
        else:
            parts.append(rng.choice(LOOKALIKES))
        parts.append(rng.choice(ctx)())
    if rng.random() < 0.5:
        parts.insert(0, rng.choice(ctx)())
    return rng.choice(["", " ", "\n"]).join(parts) if rng.random() < 0.3 else "".join(parts)


# Code point ranges for random strings (no surrogates; includes controls, PUA and unassigned points).
RANGES = [(0x20, 0x7E), (0x00, 0x1F), (0x80, 0x2FF), (0x300, 0x36F), (0x370, 0x52F), (0x590, 0x6FF),
          (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2190, 0x2BFF),
          (0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xD7B0, 0xD7FF),
          (0xE000, 0xF8FF), (0xF900, 0xFAFF), (0xFE00, 0xFFFF), (0x10000, 0x1FFFF), (0x1F300, 0x1FAFF),
          (0x20000, 0x2A6DF), (0x2A700, 0x323AF), (0xE0000, 0xE01EF), (0xF0000, 0x10FFFF)]


def _random_codepoints(rng: random.Random) -> str:
    out = []
    for _ in range(1 + rng.randrange(24)):
        lo, hi = rng.choice(RANGES)
        out.append(chr(lo + rng.randrange(hi - lo + 1)))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Fuzz strings (reference/fuzz_tokenizer.py, and the "fuzz" section of the corpus)
# --------------------------------------------------------------------------------------------------
# Short strings (1-40 characters) from a pool aimed at the pre-tokenizer regexes' alternation and
# backtracking: ASCII punctuation against letters, marks, digits of many systems, the edges of the CJK
# and kana classes, every White_Space character, format characters, symbols of each kind, PUA,
# Unicode 15/16 additions, unassigned points (incl. ones assigned only in 17.0) and special-token
# strings with their fragments. Characters are often repeated (runs of 1-6). Only hard-coded code
# points, so the output does not depend on the Python version's unicodedata.

FUZZ_SEED = 20240316


def _cps(*items) -> list[str]:
    """Characters from code points and inclusive (first, last) ranges."""
    out = []
    for it in items:
        if isinstance(it, tuple):
            out += [chr(c) for c in range(it[0], it[1] + 1)]
        else:
            out.append(chr(it))
    return out


ASCII_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
FUZZ_POOL = {
    "ascii_letter": list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    "ascii_punct": list(ASCII_PUNCT),
    # ASCII, fullwidth, Arabic-Indic, extended Arabic-Indic, Devanagari, superscripts/subscripts,
    # Roman numerals (Nl), fractions and circled numbers (No)
    "digit": _cps((0x30, 0x39), (0xFF10, 0xFF19), (0x660, 0x669), (0x6F0, 0x6F9), (0x966, 0x96F), 0xB2, 0xB3,
                  0xB9, 0x2070, (0x2074, 0x2079), (0x2080, 0x2089), (0x2160, 0x2188), 0xBC, 0xBD, 0xBE,
                  (0x2150, 0x215F), (0x2460, 0x2473), 0x3007, (0x3021, 0x3029), (0x1D7CE, 0x1D7FF)),
    # combining diacritics, Devanagari signs (Mn/Mc), enclosing marks (Me), variation selectors (Mn)
    "mark": _cps((0x300, 0x36F), (0x900, 0x903), 0x93A, 0x93B, 0x93C, (0x93E, 0x94F), (0x951, 0x957),
                 0x962, 0x963, (0x1AB0, 0x1ACE), (0x20D0, 0x20F0), (0xFE20, 0xFE2F), (0xFE00, 0xFE0F),
                 0xE0100, 0x3099, 0x309A, 0x302A, 0x302F, 0x0E31, (0x0E34, 0x0E3A), (0x0E47, 0x0E4E),
                 (0x064B, 0x065F), 0x05B0, 0x05BF, 0x1DC0, 0x1DFF),
    "letter_marked": _cps((0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x17F), 0x1C5, 0x1C8, 0x1E9E, (0x1EA0, 0x1EF9))
    + ["e\u0301", "a\u0308", "n\u0303", "A\u030a\u0301", "\u0915\u093f", "\u0915\u094d\u0937", "\u0915\u093c",
       "\u0e01\u0e48", "i\u0307\u0301", "\u0627\u064e"],
    "letter_other": _cps((0x391, 0x3A9), (0x3B1, 0x3C9), (0x410, 0x44F), (0x5D0, 0x5EA), (0x621, 0x64A),
                         (0x915, 0x939), (0xE01, 0xE30), (0x2B0, 0x2C1), 0xAA, 0xBA, 0xB5, 0x3005, 0x3006,
                         0x303B, 0x303C, 0xFF70, (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), 0x2C6, 0x2EC, 0x2EE,
                         (0x1D400, 0x1D419), 0x2071, 0x207F, (0x2090, 0x209C), 0x212A, 0x2126, 0x2132),
    # inside [U+4E00, U+9FA5], its edges, just outside (U+9FA6..U+9FFF, U+4DC0..U+4DFF hexagrams),
    # ext A, ext B, compatibility ideographs, radicals
    "cjk": _cps((0x4E00, 0x4E10), (0x4E2D, 0x4E2D), (0x6587, 0x6587), (0x9F90, 0x9FA5), (0x9FA6, 0x9FFF),
                (0x4DB0, 0x4DFF), (0x3400, 0x3410), 0x4DBF, (0x20000, 0x20010), 0x2A6DF, 0x2A6D6, 0x2B740,
                0x2CEB0, 0x30000, (0xF900, 0xF910), (0xFA70, 0xFA75), (0x2E80, 0x2E85), (0x2F00, 0x2F05),
                0x3007, 0x3021, 0x2FF0, 0x2FFB, 0x3190, 0x31C0, 0x3000),
    # kana incl. the U+3040..U+309F and U+30A0..U+30FF edges: U+3040/U+3097/U+3098 unassigned,
    # U+3099/U+309A marks, U+309B/U+309C Sk, U+309D/U+309E Lm, U+309F/U+30FF Lo, U+30A0 Pd, U+30FB Po,
    # U+30FC Lm; and kana outside the class (halfwidth, ext, small kana ext)
    "kana": _cps((0x3040, 0x3048), (0x3090, 0x309F), (0x30A0, 0x30A6), (0x30F0, 0x30FF), 0x3042, 0x30A2,
                 0x30FC, 0x30FB, (0xFF65, 0xFF6A), 0xFF70, 0xFF9E, 0xFF9F, (0x31F0, 0x31F3), 0x1B000, 0x1B001,
                 0x1B132, 0x1B155, 0x1B164, 0x3031, 0x3035, 0x303F),
    "hangul": _cps((0xAC00, 0xAC05), 0xD7A3, 0xD7A4, 0xD7B0, 0xD7FB, (0x1100, 0x1103), (0x1161, 0x1163),
                   0x11A8, (0x3131, 0x3134), 0x3164, 0xFFA0, 0xFFA1, 0x115F, 0x1160),
    # every White_Space character, plus the look-alikes that are not White_Space
    "space": _cps(0x20, 0x9, 0xA, 0xD, 0xB, 0xC, 0x85, 0xA0, 0x1680, (0x2000, 0x200A), 0x2028, 0x2029,
                  0x202F, 0x205F, 0x3000, 0x20, 0x20, 0xA, 0x180E, 0x1C, 0x1D, 0x1E, 0x1F)
    + ["\r\n", " \n", "\n ", " \r\n"],
    "format": _cps((0x200B, 0x200F), 0xFEFF, (0x2060, 0x2064), (0x2066, 0x2069), (0x202A, 0x202E), 0xAD,
                   0x61C, 0x600, 0x6DD, 0x70F, 0x180E, 0x110BD, 0x13430, 0x1BCA0, 0xE0001, 0xE0020, 0xE0041,
                   0xE007F, 0x0, 0x1, 0x7, 0x1B, 0x7F, 0x80, 0x9F),
    # So (emoji, dingbats, skin tones are Sk), Sm, Sc, Sk, and non-ASCII punctuation (Pd Ps Pe Pi Pf Po Pc)
    "symbol": _cps((0x1F600, 0x1F60F), 0x1F433, 0x1F680, 0x2764, 0x2705, 0x2600, 0x26A0, 0xA9, 0xAE, 0x2122,
                   0xB0, 0xA6, (0x1F3FB, 0x1F3FF), 0x1F1FA, 0x1F1F8, 0x20E3,
                   0xAC, 0xB1, 0xD7, 0xF7, 0x2212, 0x221E, (0x2200, 0x2208), 0x2190, 0x21D2, 0x27E8, 0x2A00,
                   0xA2, 0xA3, 0xA5, 0x20AC, 0x20B9, 0x20BF, 0x20C0, 0xFFE5, 0x58F, 0x9F2,
                   0xA8, 0xAF, 0xB4, 0xB8, (0x2C2, 0x2C5), (0x2D2, 0x2DF), 0x2E5, 0x2ED, 0x2EF, 0x375,
                   0x384, 0x385, 0x1FBD, 0xFF3E, 0xFF40, 0xFFE3, 0xA700, 0xA720, 0xA789,
                   0xA1, 0xBF, 0xA7, 0xB6, 0xB7, 0xAB, 0xBB, (0x2010, 0x2027), (0x2030, 0x205E), 0x3001,
                   0x3002, (0x3008, 0x3011), 0x301C, 0x30FB, (0xFF01, 0xFF0F), 0xFF1A, 0xFF1F, 0x2E3A, 0x2E3B,
                   0x5BE, 0x60C, 0x61F, 0x964, 0x965, 0xE4F, 0x203F, 0xFE4D, 0xFF3F, 0x2E2F),
    "private_use": _cps((0xE000, 0xE003), 0xF8FF, 0xF0000, 0xFFFFD, 0x100000, 0x10FFFD),
    # Unicode 15.0/15.1/16.0 additions: letters (Kawi, Nag Mundari, Cyrillic ext-D, CJK ext H/I, Garay,
    # Todhri, Tulu-Tigalari, Sunuwar, Gurung Khema, Kirat Rai, Ol Onal, Egyptian ext-A, Latin/Cyrillic),
    # marks, digits (Nag Mundari, Kawi, Garay, Sunuwar, Gurung Khema, Kirat Rai, Ol Onal, Myanmar ext-C,
    # outlined digits), Kaktovik numerals, symbols
    "unicode_new": _cps(0xCF3, 0xECE, 0x1123F, 0x11240, 0x11241, (0x11F00, 0x11F06), 0x11F12, 0x11F34,
                        (0x11F50, 0x11F59), 0x11F5A, 0x13440, 0x13441, 0x1DF25, 0x1E030, 0x1E06D, 0x1E08F,
                        (0x1E4D0, 0x1E4D5), 0x1E4EB, 0x1E4EC, 0x1E4EF, (0x1E4F0, 0x1E4F9), (0x1D2C0, 0x1D2C5),
                        0x31350, 0x323AF, 0x2EBF0, 0x2EE5D, 0x2FFC, 0x2FFF, 0x31EF, 0x1F6DC,
                        0x1C89, 0x1C8A, 0xA7CB, 0xA7CC, 0xA7CD, 0xA7DA, 0xA7DB, 0xA7DC, 0x897,
                        (0x10D40, 0x10D4F), 0x10D50, 0x10D65, 0x10D69, 0x10D6D, 0x10D70, 0x10D85,
                        0x105C0, 0x105F3, 0x11380, 0x11389, 0x113B8, 0x113C0, 0x11BC0, 0x11BE0,
                        (0x11BF0, 0x11BF9), 0x16100, 0x1611D, 0x1611E, 0x1612F, (0x16130, 0x16139),
                        0x16D40, 0x16D43, 0x16D6A, (0x16D70, 0x16D79), 0x1E5D0, 0x1E5ED, 0x1E5EE, 0x1E5F0,
                        (0x1E5F1, 0x1E5FA), (0x116D0, 0x116E3), (0x1CCF0, 0x1CCF9), 0x13460, 0x143FA,
                        0x1CC00, 0x1CCD6, 0x1FA89, 0x1FAE9, 0x2427, 0x31E4, 0x10EC2, 0x10EFC, 0x1B4E, 0x1B7F),
    # unassigned in Unicode 16.0 (noncharacters; holes; points assigned only in 17.0: Sidetic, Tolong
    # Siki, Beria Erfe, Tai Yo, CJK ext J, U+A7CE, U+20C1; unassigned points inside the kana class)
    "unassigned": _cps(0x378, 0x379, 0x380, 0x38B, 0x530, 0x5FF, 0x2FE0, 0xD7FC, 0xFDD0, 0xFDEF, 0xFFFE, 0xFFFF,
                       0x1FFFE, 0x3FFFD, 0x50000, 0xE0080, 0xE01F0, 0x10FFFF, 0x2A6E0, 0x3040, 0x3097, 0x3098,
                       0x10940, 0x10959, 0x11DB0, 0x11DDB, 0x16EA0, 0x16EB8, 0x1E6C0, 0x1E6DE, 0x323B0, 0x33479,
                       0xA7CE, 0xA7CF, 0x20C1, 0x1FAFA, 0x1F7DA),
}
_SPECIAL_PIECES = ["<", ">", "｜", "▁", "|", "/", "<｜", "｜>", "</", "<|", "|>", "▁of▁", "begin", "User",
                   "think", "DSML", "dsml:", "place▁holder▁no▁", "tool▁call"]
FUZZ_WEIGHTS = {"ascii_letter": 6, "ascii_punct": 6, "digit": 3, "mark": 3, "letter_marked": 2,
                "letter_other": 2, "cjk": 3, "kana": 3, "hangul": 1, "space": 6, "format": 2, "symbol": 4,
                "private_use": 1, "unicode_new": 2, "unassigned": 1, "special": 2, "special_piece": 2}
_FUZZ_CATEGORIES = [k for k in FUZZ_WEIGHTS for _ in range(FUZZ_WEIGHTS[k])]


def fuzz_string(rng: random.Random) -> str:
    """One random string of 1..40 characters: units drawn by category, often repeated 1-6 times."""
    target = 1 + rng.randrange(40)
    s = ""
    while len(s) < target:
        cat = rng.choice(_FUZZ_CATEGORIES)
        if cat == "special":
            unit = rng.choice(SPECIAL + LOOKALIKES)
            if rng.random() < 0.3:  # a fragment
                a = rng.randrange(len(unit))
                unit = unit[a:a + 1 + rng.randrange(len(unit) - a)]
        elif cat == "special_piece":
            unit = rng.choice(_SPECIAL_PIECES)
        else:
            unit = rng.choice(FUZZ_POOL[cat])
        s += unit * (1 + rng.randrange(6) if rng.random() < 0.35 else 1)
    return s[:40]


def fuzz_strings(n: int, seed: int = FUZZ_SEED) -> list[str]:
    rng = random.Random(seed)
    return [fuzz_string(rng) for _ in range(n)]


def build_corpus() -> list[str]:
    rng = random.Random(SEED)
    lines: list[str] = [""]
    # hand-written seeds, verbatim
    for lang in sorted(PROSE):
        lines += PROSE[lang]
        lines.append((" " if lang not in ("zh_hans", "zh_hant", "ja", "th") else "").join(PROSE[lang]))
        lines.append("\n".join(PROSE[lang]))
    lines += CODE + NUMBERS_FIXED + DATES_FIXED + URLS_FIXED + UNICODE_ODD + LOOKALIKES + SPECIAL
    lines.append("".join(EMOJI))
    lines += EMOJI
    # every ASCII character alone, then Latin-1 in 16-char slices
    lines += [chr(c) for c in range(128)]
    lines += ["".join(chr(c) for c in range(b, b + 16)) for b in range(0x80, 0x100, 16)]
    # special tokens in fixed contexts
    for tok in SPECIAL:
        lines += [f"a{tok}b", f" {tok} ", f"{tok}\n", f"\n{tok}", f"{tok}{tok}", f"<{tok}>", f"你好{tok}世界",
                  f"123{tok}456", f"{tok[:-1]}", f"{tok[1:]}"]
    lines += [
        "<｜User｜>Hello<｜Assistant｜>Hi there!<｜end▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜><｜User｜>1+1=?<｜Assistant｜><think>\n2</think>\n\n2<｜end▁of▁sentence｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
        "{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<｜fim▁begin｜>def f(x):\n    <｜fim▁hole｜>\n    return y<｜fim▁end｜>",
        "<｜User｜><｜User｜><｜Assistant｜><｜Assistant｜>", "<<｜User｜>>", "<｜<｜User｜>｜>", "<｜User｜｜Assistant｜>",
        "<｜User<｜User｜>", "<think><think></think></think>", "<think>\n", "</think>\n\n", "<|EOT|><|EOT|>",
        "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
        "<dsml:tool_calls></dsml:tool_calls>", "<｜/table>｜<｜table｜><｜/td｜>", "<tool_result>ok</tool_result>",
        "<｜begin▁of▁file▁name｜>main.py<｜end▁of▁file▁name｜><｜begin▁of▁file｜>print(1)<｜end▁of▁file｜>",
    ]
    # long runs (the brief's minimums) and other repeats
    lines += ["a" * 5000, " " * 3000, "!" * 2000, "\n" * 1000, "\r\n" * 300, "\t" * 500, "0" * 1000,
              "中" * 1000, "😀" * 300, "ab" * 1000, " a" * 1000, "a " * 500, "ー" * 500, "\u3000" * 300,
              "\u00a0" * 300, ". " * 300, "==" * 300, "-" * 1200, "#" * 400, "ア" * 400, "가" * 400,
              "x" * 257, "xy" * 129, "1" * 300, ("<｜User｜>" * 50), "." * 999, "aaa bbb " * 100,
              "Lorem ipsum dolor sit amet, " * 40]
    # trailing / leading whitespace variants of prose
    for s in PROSE["en"][:8] + PROSE["zh_hans"][:4] + PROSE["ru"][:3]:
        lines += [s + " ", s + "  ", s + "\n", s + " \n", s + "\r\n", "  " + s, "\t" + s, s + "\u00a0", s + "\u3000"]

    gen = ([_prose_lines(rng, 420)] + [_mixed_lines(rng, 300)] + [[_number(rng) for _ in range(180)]] +
           [[_date(rng) for _ in range(60)]] + [[_url(rng) for _ in range(60)]] +
           [[_ws_line(rng) for _ in range(150)]] + [[_code_variant(rng) for _ in range(100)]] +
           [[_special_line(rng) for _ in range(250)]] + [[_random_codepoints(rng) for _ in range(200)]] +
           [["".join(rng.choice(EMOJI) for _ in range(1 + rng.randrange(8))) for _ in range(60)]])
    for g in gen:
        lines += g
    # fuzz strings (the pool of reference/fuzz_tokenizer.py), from their own generator so that the lines
    # above do not move
    lines += fuzz_strings(1000, FUZZ_SEED)
    return list(dict.fromkeys(lines))  # drop repeats, keep first occurrence order
