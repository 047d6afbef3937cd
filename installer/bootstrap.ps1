# Aliyun Assist bootstrap for Windows: install the agent from the region's mirror.
#
#   powershell -ExecutionPolicy Bypass -File bootstrap.ps1 [-Mirror URL] [-Channel C] [-Version V]
#       [-Server URL -ActivationId ID [-ActivationCode -] [-InstanceName N]]
#
# One step (image pipelines, cloud-init): with -Server and -ActivationId the installed agent is
# registered right after the install. The activation code is a secret: give it in
# $env:ALIYUN_ASSIST_ACTIVATION_CODE or on stdin with -ActivationCode - ; it is piped to
# `assist-agent register --activation-code -`, never put on a command line.
#
# Finds the newest aliyun-assist setup.exe of the channel in the repository's TUF targets
# metadata, downloads it, checks its length and sha256 against that metadata, checks its
# Authenticode signature (a signature that matches the file, by exactly the pinned publisher
# certificate), and runs it silently. Values in @…@ are filled in when the repository publishes
# its bootstrap/ copy (the mirror fills in its own URL).
[CmdletBinding()]
param(
    [string]$Mirror = $(if ($env:ASSIST_MIRROR_URL) { $env:ASSIST_MIRROR_URL } else { "@MIRROR_URL@" }),
    [string]$Channel = $(if ($env:ASSIST_CHANNEL) { $env:ASSIST_CHANNEL } else { "@CHANNEL@" }),
    [string]$Version = $env:ASSIST_VERSION,
    [string]$Prefix = "C:\ProgramData\aliyun\assist",
    [string]$Server = $env:ASSIST_SERVER_URL,
    [string]$ActivationId = $env:ASSIST_ACTIVATION_ID,
    [string]$ActivationCode = "",
    [string]$InstanceName = $env:ASSIST_INSTANCE_NAME
)

$ErrorActionPreference = "Stop"
$Package = "aliyun-assist"
$GpgFingerprint = "@GPG_FINGERPRINT@"          # for the Linux paths; kept for reference
$PublisherSha256 = "@AUTHENTICODE_SHA256@"     # sha256 of the publisher certificate (DER)

function Fail([string]$Message) {
    Write-Error "bootstrap: error: $Message"
    exit 1
}

if ($Channel.StartsWith("@")) { $Channel = "stable" }
if (-not $Mirror -or $Mirror.StartsWith("@")) { Fail "no mirror URL: pass -Mirror URL" }
if ($PublisherSha256.StartsWith("@") -or -not $PublisherSha256) {
    Fail "no pinned publisher certificate in this script: download it from your mirror's bootstrap/"
}
if (-not $Mirror.EndsWith("/")) { $Mirror = "$Mirror/" }

# The activation code: read now, removed from the environment so nothing started below has it.
$Code = $env:ALIYUN_ASSIST_ACTIVATION_CODE
Remove-Item Env:ALIYUN_ASSIST_ACTIVATION_CODE -ErrorAction SilentlyContinue
if ($Server -or $ActivationId) {
    if (-not ($Server -and $ActivationId)) {
        Fail "-Server and -ActivationId go together (pass both to register now, or neither)"
    }
    if ($ActivationCode -eq "-") { $Code = [Console]::In.ReadLine() }
    elseif ($ActivationCode) {
        Fail "-ActivationCode takes only '-' (stdin): a code on the command line is visible to other processes; or set ALIYUN_ASSIST_ACTIVATION_CODE"
    }
    if (-not $Code) {
        Fail "no activation code: set ALIYUN_ASSIST_ACTIVATION_CODE, or pass -ActivationCode - and write it to stdin"
    }
}

function Register-Agent {
    if (-not $Server) { return }
    if (Test-Path (Join-Path $Prefix "state\identity.json")) {
        Write-Host "bootstrap: already registered: keeping that registration"
        return
    }
    $current = (Get-Content -Path (Join-Path $Prefix "current.txt") -TotalCount 1).Trim()
    $launcher = Join-Path $Prefix "versions\$current\bin\assist-agent.cmd"
    $arguments = @("register", "--server", $Server, "--activation-id", $ActivationId, "--activation-code", "-", "--prefix", $Prefix)
    if ($InstanceName) { $arguments += @("--instance-name", $InstanceName) }
    # piped: the code reaches the agent on its stdin, not on its command line
    $instance = $Code | & $launcher @arguments
    if ($LASTEXITCODE -ne 0) {
        Fail "installed, but registration with $Server failed (see above); register later with $launcher register --server URL --activation-id ID (code in ALIYUN_ASSIST_ACTIVATION_CODE)"
    }
    Write-Host "bootstrap: registered as $instance with $Server"
    Restart-Service -Name "AliyunAssistService" -ErrorAction SilentlyContinue
}
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12

function Get-Json([string]$Path) {
    $response = Invoke-WebRequest -UseBasicParsing -Uri ($Mirror + $Path) -TimeoutSec 30
    return $response.Content | ConvertFrom-Json
}

function Compare-Version([string]$A, [string]$B) {
    try { return ([version]$A).CompareTo([version]$B) } catch { return [string]::Compare($A, $B) }
}

$timestamp = Get-Json "metadata/timestamp.json"
$snapVersion = $timestamp.signed.meta.'snapshot.json'.version
$snapshot = Get-Json "metadata/$snapVersion.snapshot.json"
$targetsVersion = $snapshot.signed.meta.'targets.json'.version
$targets = Get-Json "metadata/$targetsVersion.targets.json"

$best = $null
foreach ($entry in $targets.signed.targets.PSObject.Properties) {
    $custom = $entry.Value.custom
    if ($null -eq $custom) { continue }
    if ($custom.package -ne $Package -or $custom.format -ne "exe" -or $custom.os -ne "windows") { continue }
    if (-not ($custom.channels -contains $Channel)) { continue }
    if ($Version -and $custom.version -ne $Version) { continue }
    if ($null -eq $best -or (Compare-Version $custom.version $best.Value.custom.version) -gt 0) { $best = $entry }
}
if ($null -eq $best) { Fail "no $Package setup.exe in channel $Channel" }

$path = $best.Name
$info = $best.Value
$sha = $info.hashes.sha256
$dir = Split-Path -Parent $path
$file = Split-Path -Leaf $path
$tmp = Join-Path ([IO.Path]::GetTempPath()) ("assist-" + [Guid]::NewGuid().ToString("N"))
New-Item -ItemType Directory -Path $tmp | Out-Null
$exe = Join-Path $tmp $file
try {
    Invoke-WebRequest -UseBasicParsing -Uri ($Mirror + "targets/" + $dir.Replace("\", "/") + "/$sha.$file") -OutFile $exe -TimeoutSec 600
    $length = (Get-Item $exe).Length
    if ($length -ne [int64]$info.length) { Fail "$file has $length bytes, the repository says $($info.length)" }
    $got = (Get-FileHash -Algorithm SHA256 -Path $exe).Hash.ToLowerInvariant()
    if ($got -ne $sha.ToLowerInvariant()) { Fail "sha256 mismatch for ${file}: $got" }

    $signature = Get-AuthenticodeSignature -FilePath $exe
    # The publisher certificate is pinned, so a self-signed one (not in the machine's roots:
    # UnknownError / NotTrusted) is fine; a signature that does not match the file is not.
    if (@("Valid", "UnknownError", "NotTrusted") -notcontains [string]$signature.Status) {
        Fail "Authenticode check of $file failed: $($signature.Status) $($signature.StatusMessage)"
    }
    if ($null -eq $signature.SignerCertificate) { Fail "$file is not signed" }
    $sha256 = [Security.Cryptography.SHA256]::Create()
    $certHash = -join ($sha256.ComputeHash($signature.SignerCertificate.RawData) | ForEach-Object { $_.ToString("x2") })
    if ($certHash -ne $PublisherSha256.ToLowerInvariant()) {
        Fail "$file is signed by another certificate ($certHash), not the pinned publisher"
    }

    Write-Host "bootstrap: installing $Package $($info.custom.version) from $Mirror"
    $process = Start-Process -FilePath $exe -ArgumentList @("/S", "/D=$Prefix") -Wait -PassThru
    if ($process.ExitCode -ne 0) { Fail "the installer exited with $($process.ExitCode)" }
    Write-Host "bootstrap: installed $Package $($info.custom.version) into $Prefix"
    Register-Agent
}
finally {
    Remove-Item -Recurse -Force $tmp -ErrorAction SilentlyContinue
}
