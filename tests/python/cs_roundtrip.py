#!/usr/bin/env python3
"""Drives `netbridge serve` with the PyPI CloudStack client `cs`, unmodified.

Usage: cs_roundtrip.py ENDPOINT APIKEY SECRETKEY

create -> register -> updateRegisteredExtension -> list -> unregister ->
delete, through both GET (query string) and POST (form body), plus the
errors a CloudStack client must see (431 with errortext, 401 for a wrong
secret). Exit 0 on success, 77 when `cs` is not installed, 1 on a failure.
"""
import sys
import uuid

try:
    from cs import CloudStack, CloudStackApiException
except ImportError:
    print("SKIP: python package 'cs' is not installed (pip install cs)")
    sys.exit(77)

AUTH_TEXT = "unable to verify user credentials and/or request signature"


def check(cond, what, got=None):
    if not cond:
        print(f"FAIL: {what}" + (f": got {got!r}" if got is not None else ""))
        sys.exit(1)
    print(f"ok: {what}")


def extension_of(answer):
    """Unwraps {"extension": {...}} (the response object of one extension)."""
    if isinstance(answer, dict) and isinstance(answer.get("extension"), dict):
        return answer["extension"]
    return answer


def expect_api_error(call, codes, text_part):
    """The HTTP status equals the CloudStack error code, as CloudStack does."""
    try:
        call()
    except CloudStackApiException as exc:
        got_status = exc.response.status_code if exc.response is not None else None
        error = exc.error or {}
        check(got_status in codes, f"HTTP status in {codes}", got_status)
        check(error.get("errorcode") == got_status, "errorcode equals HTTP status", error)
        check(text_part in error.get("errortext", ""), f"errortext contains {text_part!r}", error)
        return
    check(False, f"expected an API error {codes}")


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    endpoint, key, secret = sys.argv[1:4]
    get = CloudStack(endpoint=endpoint, key=key, secret=secret, method="get")
    post = CloudStack(endpoint=endpoint, key=key, secret=secret, method="post")

    name = "cs-ext-" + uuid.uuid4().hex[:8]
    # Characters that exercise the signing encoding (space, +, &, =, /, UTF-8, *).
    description = "net bridge: a+b&c=d/é*"
    created = extension_of(get.createExtension(
        name=name,
        type="NetworkOrchestrator",
        description=description,
        details=[{"key": "network.services", "value": "Dhcp,Dns,UserData"}],
    ))
    ext_id = created.get("id")
    check(bool(ext_id), "createExtension returned an id", created)
    check(created.get("name") == name, "created name", created.get("name"))
    check(created.get("description") == description, "description survives encoding",
          created.get("description"))

    pn = str(uuid.uuid4())
    registered = extension_of(post.registerExtension(
        extensionid=ext_id,
        resourceid=pn,
        resourcetype="PhysicalNetwork",
        details=[{"key": "hosts", "value": "192.0.2.10"}],
    ))
    check(registered.get("id") == ext_id, "registerExtension answers the extension", registered)

    updated = extension_of(post.updateRegisteredExtension(
        extensionid=ext_id,
        resourceid=pn,
        resourcetype="PhysicalNetwork",
        details=[
            {"key": "guest.network.device", "value": "eth1"},
            {"key": "password", "value": "not-to-be-shown"},
        ],
    ))
    check(updated.get("id") == ext_id, "updateRegisteredExtension answers the extension", updated)
    check("not-to-be-shown" not in repr(updated), "hidden detail not returned")

    # Version-2 signing (no signatureVersion/expires), as older clients do.
    legacy = CloudStack(endpoint=endpoint, key=key, secret=secret, expiration=-1)
    listed = legacy.listExtensions(id=ext_id)
    check(listed.get("count") == 1, "unexpiring (v2) signature accepted", listed)

    listed = get.listExtensions(id=ext_id)
    exts = listed.get("extension", [])
    check(len(exts) == 1 and exts[0].get("id") == ext_id, "listExtensions id= finds it", listed)
    resources = exts[0].get("resources", [])
    check(len(resources) == 1, "one registration listed", resources)
    rdetails = resources[0].get("details", {})
    check(rdetails.get("guest.network.device") == "eth1", "registration detail updated", rdetails)
    check("hosts" not in rdetails, "visible detail not re-sent was removed", rdetails)
    check("password" not in rdetails, "hidden detail not listed", rdetails)
    check("not-to-be-shown" not in repr(listed), "secret never in list output")

    # Error shapes a CloudStack client relies on.
    expect_api_error(lambda: get.createExtension(name=name + "-x", type="Bogus"),
                     (431,), "Invalid type specified")
    expect_api_error(lambda: get.deleteExtension(id=ext_id),
                     (431, 530), "Extension has associated resources")

    post.unregisterExtension(extensionid=ext_id, resourceid=pn, resourcetype="PhysicalNetwork")
    after = get.listExtensions(id=ext_id).get("extension", [])
    check(len(after) == 1 and not after[0].get("resources"), "unregistered", after)

    deleted = post.deleteExtension(id=ext_id)
    check(str(deleted.get("success")).lower() == "true", "deleteExtension success", deleted)
    gone = get.listExtensions(id=ext_id)
    check(not gone.get("extension"), "deleted extension no longer listed", gone)

    wrong = CloudStack(endpoint=endpoint, key=key, secret=secret + "x")
    expect_api_error(lambda: wrong.listExtensions(), (401,), AUTH_TEXT)

    print("cs client round trip: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
