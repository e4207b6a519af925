"""Texts the guardrails are judged on, written from the formats' specifications.

POSITIVES: (kind, value, sentence) where the sentence holds the value as a person or a model
would write it; the value must be caught as that kind and never shown. Long random bodies (keys,
JWTs, PEM blocks) come from a seeded generator, so they are realistic in shape and the same on
every run. NEGATIVES: developer answers and Hinglish/Urdu prose that only *name* secrets or hold
numbers that are not personal data; they must pass untouched.
"""

from __future__ import annotations

import base64
import json
import random
import string

_rng = random.Random(22)
_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "+/"
_B64URL = _ALNUM + "-_"


def _random(alphabet: str, length: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(length))


def _b64url_json(value: dict[str, object]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


JWT = ".".join(
    [
        _b64url_json({"alg": "RS256", "typ": "JWT", "kid": "x7Gh2kLm9QwErT5yUi3oPa"}),
        _b64url_json(
            {
                "iss": "https://login.example-idp.com/6f1c2d3e/v2.0",
                "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
                "aud": "api://9b2f4c1e-7d3a-4e5f-8a6b-1c2d3e4f5a6b",
                "iat": 1733300000,
                "exp": 1733303600,
                "name": "Asha Verma",
                "roles": ["reader", "writer"],
                "scp": "openid profile offline_access",
            }
        ),
        _random(_B64URL, 342),
    ]
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    + "\n".join(_random(_B64, 64) for _ in range(12))
    + "\n"
    + _random(_B64, 40)
    + "==\n-----END RSA PRIVATE KEY-----"
)
PEM_PKCS8 = (
    "-----BEGIN PRIVATE KEY-----\n"
    + "\n".join(_random(_B64, 64) for _ in range(8))
    + "\n-----END PRIVATE KEY-----"
)
AZURE = _random(_B64, 86) + "=="
AWS_SECRET = _random(_B64, 40)
LONG_TOKEN = _random(_ALNUM, 300)

# (kind, value, sentence with {v} where the value goes)
POSITIVES: list[tuple[str, str, str]] = [
    # --- India ---
    ("aadhaar", "2345 6789 0124", "Mera Aadhaar number {v} hai, please verify kar do."),
    ("aadhaar", "2345-6789-0124", "Aadhaar: {v} (as printed on the e-Aadhaar)."),
    ("aadhaar", "498765432102", "Aadhaar no {v} linked with the bank."),
    ("aadhaar", "८७६५ ४३२१ ०९८८", "Aadhaar {v} hai mera."),
    ("pan", "ABCPE1234F", "PAN card number {v} hai, ITR ke liye."),
    ("pan", "AAPFU0939F", "Firm ka PAN {v} is on the invoice."),
    ("phone", "+91 98765 43210", "Call me on {v} after 6 pm."),
    ("phone", "+91-98765-43210", "WhatsApp: {v}."),
    ("phone", "9876543210", "Mera number {v} hai, kal call karna."),
    ("phone", "09876543210", "Landline nahi, mobile {v} pe call karo."),
    ("phone", "+919876543210", "Reach the driver at {v} today."),
    ("phone", "98765 43210", "Contact: {v} (Mumbai office)."),
    ("upi", "rahul.sharma@oksbi", "Paise {v} pe bhej do."),
    ("upi", "9876543210@ybl", "PhonePe UPI: {v}, thanks!"),
    ("upi", "priya99@okhdfcbank", "Send the fee to {v} by Friday."),
    ("upi", "kiranastore@paytm", "Shop ka UPI {v} hai."),
    (
        "bank_account",
        "50100123456789",
        "Account no. {v}, IFSC HDFC0001234, Andheri branch.",
    ),
    ("bank_account", "32165498701", "IFSC: SBIN0005943, A/c: {v} (savings)."),
    # --- Pakistan ---
    ("cnic", "42101-1234567-1", "Mera CNIC {v} hai."),
    ("cnic", "4210112345671", "CNIC number: {v} please update it."),
    ("cnic", "35202 1234567 3", "Shanakhti card {v} hai."),
    ("cnic", "۴۲۱۰۱-۱۲۳۴۵۶۷-۱", "Mera CNIC {v} hai."),
    ("phone", "0300 1234567", "Jazz number {v} pe rabta karein."),
    ("phone", "0300-1234567", "Call {v} in Lahore."),
    ("phone", "+92 300 1234567", "Mobile: {v}."),
    ("phone", "03001234567", "Mera number {v} hai."),
    ("phone", "+923001234567", "WhatsApp {v} pe message karo."),
    # --- US, UK, Europe ---
    ("ssn", "536-22-1234", "SSN {v} is on the W-2."),
    ("ssn", "536 22 1234", "Social security number: {v}."),
    ("uk_nino", "AB 12 34 56 C", "My National Insurance number is {v}."),
    ("uk_nino", "JG103759A", "NI number {v} for payroll."),
    ("iban", "GB82 WEST 1234 5698 7654 32", "Pay to IBAN {v} please."),
    ("iban", "DE89370400440532013000", "IBAN: {v} (Commerzbank)."),
    ("iban", "PK36SCBL0000001123456702", "Transfer to {v} today."),
    ("card", "4111 1111 1111 1111", "My card is {v}, expiry 12/27."),
    ("card", "5500-0000-0000-0004", "Use card {v} for the order."),
    ("card", "378282246310005", "Amex {v} was charged."),
    ("card", "6011111111111117", "Card number: {v}."),
    ("email", "jane.doe@example.com", "Write to {v} for help."),
    ("email", "rahul.verma@mail.company.co.in", "Email {v} and cc me."),
    ("email", "support+billing@sub.example.org", "Contact {v}."),
    # --- secrets ---
    ("openai_key", "sk-proj-" + _random(_B64URL, 120), 'client = OpenAI(api_key="{v}")'),
    ("openai_key", "sk-" + _random(_ALNUM, 48), "OPENAI_API_KEY={v}"),
    ("anthropic_key", "sk-ant-api03-" + _random(_B64URL, 93) + "AA", "ANTHROPIC_API_KEY={v}"),
    ("google_api_key", "AIza" + _random(_B64URL, 35), "GOOGLE_API_KEY={v} in .env"),
    (
        "google_api_key",
        "AIza" + _random(_B64URL, 35),
        "curl 'https://maps.googleapis.com/maps/api/geocode/json?address=Delhi&key={v}'",
    ),
    ("aws_access_key", "AKIA2OGYBAH6STMJ3X7Q", 'AccessKeyId: "{v}"'),
    ("aws_secret_key", AWS_SECRET, '"SecretAccessKey": "{v}",'),
    ("aws_secret_key", _random(_B64, 40), "aws_secret_access_key = {v}"),
    (
        "azure_storage_key",
        AZURE,
        "DefaultEndpointsProtocol=https;AccountName=shopdata;AccountKey={v};"
        "EndpointSuffix=core.windows.net",
    ),
    ("github_token", "ghp_" + _random(_ALNUM, 36), "git clone https://{v}@github.com/o/r"),
    ("github_token", "github_pat_11A" + _random(_ALNUM + "_", 79), "GH_TOKEN={v}"),
    ("gitlab_token", "glpat-" + _random(_B64URL, 20), "PRIVATE-TOKEN: {v}"),
    (
        "slack_token",
        "xoxb-2400000000000-2400000000001-" + _random(_ALNUM, 24),
        "SLACK_BOT_TOKEN={v}",
    ),
    ("slack_token", "xoxp-" + "-".join(_random(string.digits, 12) for _ in range(3)), "{v}"),
    (
        "slack_webhook",
        "https://hooks.slack.com/services/T024BE7LD/B07A1B2C3D4/" + _random(_ALNUM, 24),
        "Post alerts to {v} from the job.",
    ),
    ("stripe_key", "sk_live_51H" + _random(_ALNUM, 96), 'stripe.api_key = "{v}"'),
    ("stripe_key", "rk_live_51H" + _random(_ALNUM, 96), "STRIPE_RESTRICTED_KEY={v}"),
    (
        "sendgrid_key",
        "SG." + _random(_B64URL, 22) + "." + _random(_B64URL, 43),
        "SENDGRID_API_KEY={v}",
    ),
    ("twilio_key", "SK" + _random("0123456789abcdef", 32), "TWILIO_API_KEY={v}"),
    ("twilio_key", "AC" + _random("0123456789abcdef", 32), "account_sid = '{v}'"),
    ("jwt", JWT, "Authorization: Bearer {v}"),
    ("jwt", JWT, "Here is the id_token: {v} (expires in an hour)."),
    ("private_key", PEM, "Save this as key.pem:\n{v}\nthen run chmod 600 key.pem."),
    ("private_key", PEM_PKCS8, "```\n{v}\n```"),
    ("password", "S3cr3t-Pa55w0rd", "DATABASE_URL=postgresql://app_user:{v}@db.internal:5432/shop"),
    ("password", "f7Kq9zLm2xYw", "REDIS_URL=redis://:{v}@cache.example.com:6379/0"),
    ("password", "q9Wz!x7Lp", "mysql://root:{v}@127.0.0.1:3306/app"),
    ("password", "Zx9!kq2#Lm7v", "DB_PASSWORD={v} in the env file"),
    ("password", "Xk7#pQ2!vL9z", 'config = {{"user": "asha", "password": "{v}"}}'),
    ("secret", "Q8~xR2.pLk9_vT4mZ7-wN3sY6bH1jD5", 'client_secret: "{v}"'),
    ("secret", LONG_TOKEN, "token: {v}"),
    ("secret", "3f8a9c2b7e1d4f6a8b0c2d4e6f8a0b1c", 'api_key = "{v}"'),
]

# Uuid whose last group is a Verhoeff-valid 12-digit number (an Aadhaar shape).
UUID_WITH_AADHAAR_TAIL = "123e4567-e89b-12d3-a456-426614174000"

NEGATIVES: list[str] = [
    # code that reads secrets without holding one
    'from openai import OpenAI\n\nclient = OpenAI(api_key=os.environ["OPENAI_API_KEY"])\n',
    'token = os.getenv("GITHUB_TOKEN")\nheaders = {"Authorization": f"Bearer {token}"}',
    "import getpass\n\npassword = getpass.getpass()\n",
    'auth = request.headers.get("Authorization")\nif auth is None:\n    abort(401)',
    "Set it in your shell: GITHUB_TOKEN=<token>. Then run the script again.",
    'export OPENAI_API_KEY="sk-..."',
    "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "api_key: ${OPENAI_API_KEY}\npassword: ${DB_PASSWORD}",
    'password: "{{ db_password }}"',
    "DATABASE_URL=postgresql://user:password@localhost:5432/mydb",
    "postgresql://${DB_USER}:${DB_PASSWORD}@db:5432/app",
    "docker run -e POSTGRES_PASSWORD=$POSTGRES_PASSWORD postgres:16",
    "api_key = settings.OPENAI_API_KEY",
    "secret_key = config['SECRET_KEY']",
    "Authorization: Bearer <your-access-token>",
    "client = Anthropic(api_key=api_key)  # never hard-code the key",
    "const apiKey = process.env.OPENAI_API_KEY;",
    "let token = await getToken({ scopes: ['openid'] });",
    "password = input('Password: ')",
    "if password == confirm_password:\n    save(user)",
    "max_tokens=256, temperature=0.7, top_p=1.0, stream=True",
    '{"model": "gpt-4o-mini", "max_tokens": 4096, "stream": true}',
    "token_count = len(tokens)  # 1500 tokens in this answer",
    "for chunk in stream:\n    print(chunk.choices[0].delta.content or '', end='')",
    "git clone git@github.com:streamchat/streamchat.git",
    "y = weights@inputs + bias",
    "@dataclass(frozen=True)\nclass Delta:\n    text: str",
    "uvicorn app:app --host 127.0.0.1 --port 8000 --workers 4",
    "Connect to 192.168.1.100:6379 or 10.0.0.12 on the private network.",
    "pip install python-stdnum==2.2 phonenumbers==9.0.43 chainlit==2.12.0",
    "env:\n  GITHUB_TOKEN: ${{ secrets.GITHUB_TOKEN }}\n"
    "  OPENAI_API_KEY: ${{ secrets.OPENAI_API_KEY }}",
    "- name: DB_PASSWORD\n  valueFrom:\n    secretKeyRef:\n"
    "      name: db-secret\n      key: password",
    'curl -H "Authorization: Bearer $TOKEN" https://api.example.com/v1/items',
    "curl -H 'Authorization: Bearer YOUR_API_KEY' https://api.openai.com/v1/models",
    "jwt.decode(token, key=public_key, algorithms=['RS256'], audience='api://default')",
    "secret = secrets.token_urlsafe(32)",
    "aws configure set aws_secret_access_key $AWS_SECRET_ACCESS_KEY",
    "SESSION_SECRET=change-me-in-production",
    "Run `openssl genrsa -out key.pem 2048` to create a private key file.",
    "image: ghcr.io/streamchat/app@sha256:"
    "3f2a9c81b7d04e6a5c1b2d3e4f5a6b7c8d9e0f1234567890abcdef12345678",
    # documentation of key formats
    "OpenAI keys start with `sk-` (project keys with `sk-proj-`), Anthropic keys with "
    "`sk-ant-`, AWS access key ids with `AKIA` and 16 more capitals or digits, GitHub tokens "
    "with `ghp_` and Stripe live keys with `sk_live_`.",
    "A JWT has three parts separated by dots: header.payload.signature, each base64url.",
    "A PEM file starts with -----BEGIN and a label; never paste a private key into a chat.",
    "The Slack webhook URL looks like https://hooks.slack.com/services/T00000000/B00000000/"
    "XXXXXXXXXXXXXXXXXXXXXXXX in Slack's docs.",
    # identifiers and numbers that are not personal data
    f"Request id {UUID_WITH_AADHAAR_TAIL} failed; retry with a new one.",
    "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "Fixed in commit 3f2a9c81b7d04e6a5c1b2d3e4f5a6b7c8d9e0f12 on main.",
    "Order #402-7781223-9912345 shipped; tracking ID 1Z999AA10123456784.",
    "Order ID 1234567812345678 will arrive on 15-08-2024.",
    "Invoice INV-2024-000123, due 2024-08-15, amount ₹1,25,000 (GST extra).",
    "Flat ki keemat ₹85 lakh hai, aur project ka budget 2.5 crore (₹2,50,00,000) hai.",
    "Kul rakam ₹ १,२५,००० hai.",
    "Meeting on 15/08/2024 at 10:30, then 2024-08-16 12:00 IST.",
    "Python 3.11.4, Node v20.11.1, chainlit 2.12.0 and openai 3.60.1 were used.",
    "Population of Mumbai is about 2,04,11,000 and PIN code 400001.",
    "Epoch 1733300000 is 4 Dec 2024; in ms that is 1733300000000.",
    "The ratio was 12345 to 67890 over 3 years, roughly 0.18.",
    "SELECT * FROM orders WHERE id = 1234567 AND total > 25000;",
    "Ek lakh pachees hazaar (₹1,25,000) ka loan 12% byaaj par, EMI ₹4,150 har mahine.",
    "Train 12951 Mumbai Rajdhani, PNR 4521367890, coach B4 seat 32.",
    "Mera pin code 110001 hai aur ghar ka number 221B.",
    "Latitude 28.6139, longitude 77.2090 (New Delhi).",
    "Version 10.0.19045.3693 of Windows, build 22631.2861.",
    "The tokenizer maps 'hello' to token id 15339 and ' world' to 1917.",
    # Hinglish and Urdu prose that uses secret words
    "Success ka secret: consistency aur mehnat. Roz thoda thoda seekho.",
    "Token: authentication ke liye use hota hai, har request ke saath bhejna padta hai.",
    "Password yaad rakhna zaroori hai, isliye password manager use karo.",
    "API key kabhi code mein mat likho, environment variable mein rakho.",
    "Secret: hamesha sach bolo, kamyabi ka raaz yahi hai.",
    "Access token: thodi der ke liye valid hota hai, refresh token: lambe samay tak.",
    "Kamyabi ka raaz: mehnat, sabr aur imaandari.",
    "Streaming mein har token alag se aata hai, isliye jawab dheere dheere dikhta hai.",
    "Aap ka sawal acha hai! Chaliye dekhte hain ke streaming kaise kaam karti hai.",
    "Yeh class assistants aur classic passes ke baare mein hai.",
    "Niki Lauda won in 1975 and 1977; Randi Zuckerberg spoke at Lund University.",
    "Ullu banaya, kutta bhaunk raha tha, aur class mein sab has rahe the.",
]
