#!/usr/bin/env python3
"""Drives `netbridge serve` with the PyPI CloudStack client `cs`, unmodified.

Usage: cs_roundtrip.py ENDPOINT APIKEY SECRETKEY

create -> register -> updateRegisteredExtension -> list ->
updateNetworkServiceProvider (an async job, polled by the client through
queryAsyncJobResult until done) -> unregister -> delete, through both GET
(query string) and POST (form body), plus the errors a CloudStack client must
see (<command>response with errorcode/cserrorcode/errortext and the
X-Description header; 530 for the manager's refusals, 401 for a wrong
secret), a failed job, and an XML answer (no `response` parameter). Exit 0 on
success, 77 when `cs` is not installed, 1 on a failure.
"""
import sys
import time
import uuid
import xml.etree.ElementTree as ET

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


def expect_api_error(call, codes, text_part, cs_code=None):
    """The HTTP status equals the CloudStack error code, as CloudStack does;
    the body carries uuidList/errorcode/cserrorcode/errortext and the
    X-Description header repeats the text."""
    try:
        call()
    except CloudStackApiException as exc:
        got_status = exc.response.status_code if exc.response is not None else None
        error = exc.error or {}
        check(got_status in codes, f"HTTP status in {codes}", got_status)
        check(error.get("errorcode") == got_status, "errorcode equals HTTP status", error)
        check(text_part in error.get("errortext", ""), f"errortext contains {text_part!r}", error)
        check(error.get("uuidList") == [], "uuidList present", error)
        if cs_code is not None:
            check(error.get("cserrorcode") == cs_code, f"cserrorcode {cs_code}", error)
        check(exc.response.headers.get("X-Description") == error.get("errortext"),
              "X-Description header is the errortext", exc.response.headers.get("X-Description"))
        return error
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

    # The provider registration created; updateNetworkServiceProvider is
    # asynchronous: a jobid at once, then the client polls
    # queryAsyncJobResult until the job is done.
    providers = get.listNetworkServiceProviders(physicalnetworkid=pn)
    provs = providers.get("networkserviceprovider", [])
    check(len(provs) == 1 and provs[0].get("name") == name, "provider of the registration", providers)
    prov_id = provs[0]["id"]
    queued = post.updateNetworkServiceProvider(id=prov_id, state="Disabled")
    check(set(queued) == {"jobid"}, "updateNetworkServiceProvider answers only a jobid", queued)
    poller = CloudStack(endpoint=endpoint, key=key, secret=secret, method="post",
                        fetch_result=True, poll_interval=0.05, job_timeout=60)
    result = poller.updateNetworkServiceProvider(id=prov_id, state="Disabled")
    nsp = result.get("networkserviceprovider", {})
    check(nsp.get("state") == "Disabled" and nsp.get("id") == prov_id,
          "job result polled to completion holds the provider", result)
    # The first job, polled by hand as a client without fetch_result does
    # (bounded: the job is a registry write).
    deadline = time.monotonic() + 60
    job = get.queryAsyncJobResult(jobid=queued["jobid"])
    while job.get("jobstatus") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
        job = get.queryAsyncJobResult(jobid=queued["jobid"])
    check(job.get("jobstatus") == 1 and job.get("jobresultcode") == 0
          and job.get("jobresulttype") == "object", "first job succeeded", job)
    jobs = get.listAsyncJobs()
    check(queued["jobid"] in [j.get("jobid") for j in jobs.get("asyncjobs", [])],
          "listAsyncJobs reports the job", jobs)
    # A job that fails: the client raises with the job's error.
    try:
        poller.updateNetworkServiceProvider(id=prov_id, servicelist="Lb")
        check(False, "failed job raises")
    except CloudStackApiException as exc:
        error = exc.error or {}
        check(error.get("errorcode") == 431 and "servicelist" in error.get("errortext", ""),
              "failed job carries errorcode and errortext", error)

    # Discovery, as CloudMonkey's sync does it.
    apis = get.listApis(name="updateNetworkServiceProvider").get("api", [])
    check(len(apis) == 1 and apis[0].get("isasync") is True, "listApis marks the async command", apis)
    required = [p["name"] for p in apis[0].get("params", []) if p.get("required")]
    check(required == ["id"], "listApis required parameters", required)

    # XML, CloudStack's default when no `response` is sent.
    text = get.listExtensions(id=ext_id, json=False)
    root = ET.fromstring(text)
    check(root.tag == "listextensionsresponse" and root.get("cloud-stack-version") == "4.23.0.0",
          "XML root element", text[:120])
    check(root.findtext("count") == "1" and root.findtext("extension/id") == ext_id
          and root.findtext("extension/resources/type") == "PhysicalNetwork",
          "XML answer holds the extension", text[:400])

    # Error shapes a CloudStack client relies on.
    expect_api_error(lambda: get.createExtension(name=name + "-x", type="Bogus"),
                     (530,), "Invalid type specified - Bogus", 4250)
    expect_api_error(lambda: get.createExtension(name=name, type="NetworkOrchestrator"),
                     (530,), "Extension by name already exists", 4250)
    expect_api_error(lambda: get.deleteExtension(id=ext_id),
                     (530,), "Extension has associated resources", 4250)
    expect_api_error(lambda: get.createExtension(type="Orchestrator"),
                     (431,), "due to missing parameter name", 4350)

    post.unregisterExtension(extensionid=ext_id, resourceid=pn, resourcetype="PhysicalNetwork")
    after = get.listExtensions(id=ext_id).get("extension", [])
    check(len(after) == 1 and not after[0].get("resources"), "unregistered", after)

    deleted = post.deleteExtension(id=ext_id)
    check(str(deleted.get("success")).lower() == "true", "deleteExtension success", deleted)
    gone = get.listExtensions(id=ext_id)
    check(not gone.get("extension"), "deleted extension no longer listed", gone)

    wrong = CloudStack(endpoint=endpoint, key=key, secret=secret + "x")
    expect_api_error(lambda: wrong.listExtensions(), (401,), AUTH_TEXT)
    expect_api_error(lambda: get.noSuchCommand(), (401,), AUTH_TEXT)

    print("cs client round trip: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
