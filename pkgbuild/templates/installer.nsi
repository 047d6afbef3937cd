; Silent installer of @PACKAGE@ @VERSION@ for Windows (x86_64).
; The agent payload goes to <prefix>\versions\@VERSION@ (prefix default C:\ProgramData\aliyun\assist,
; /D=DIR overrides it); <prefix>\current.txt names the current version and is only replaced when
; no newer version is current (the old value moves to previous.txt). Run with /S for no UI.
Unicode true
SetCompressor /SOLID @COMPRESSOR@
Name "@DISPLAY_NAME@ @VERSION@"
OutFile "@OUTFILE@"
InstallDir "@INSTALL_DIR@"
RequestExecutionLevel admin
ShowInstDetails nevershow
SilentInstall normal
AutoCloseWindow true

!include "LogicLib.nsh"
!include "WordFunc.nsh"
!include "TextFunc.nsh"

Page instfiles

Function ReplaceFile
  ; $R0 = temp file, $R1 = destination: MoveFileEx with MOVEFILE_REPLACE_EXISTING (atomic on NTFS)
  System::Call 'kernel32::MoveFileExW(w R0, w R1, i 1) i .r9'
  ${If} $9 == 0
    SetErrors
  ${EndIf}
FunctionEnd

Function WriteVersionFile
  ; $R1 = destination, $R2 = content
  StrCpy $R0 "$R1.tmp"
  FileOpen $8 $R0 w
  FileWrite $8 "$R2$\r$\n"
  FileClose $8
  Call ReplaceFile
FunctionEnd

Section "Install"
  SetOutPath "$INSTDIR@SUBDIR@"
  File /r "@PAYLOAD@/*"
@AGENT_SECTION@
SectionEnd
